"""The embedded OpenAI-compatible LLM server (llama.cpp) for machines without vLLM."""

from .server import WORDS_ONLY_GBNF, EmbeddedLLMServer, EmbeddedServerError

__all__ = ["WORDS_ONLY_GBNF", "EmbeddedLLMServer", "EmbeddedServerError"]
