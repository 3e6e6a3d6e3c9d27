"""The LLM through an OpenAI-compatible endpoint: vLLM in production, llama.cpp embedded."""

from .llm import LLM, LLMOptions, first_served_model

__all__ = ["LLM", "LLMOptions", "first_served_model"]
