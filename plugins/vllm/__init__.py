"""The LLM through an OpenAI-compatible endpoint: vLLM in production, llama.cpp embedded."""

from .llm import LLM, LLMOptions

__all__ = ["LLM", "LLMOptions"]
