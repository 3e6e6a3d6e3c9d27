"""The embedded OpenAI-compatible LLM server (llama.cpp) for machines without vLLM."""

from .server import EmbeddedLLMServer, EmbeddedServerError

__all__ = ["EmbeddedLLMServer", "EmbeddedServerError"]
