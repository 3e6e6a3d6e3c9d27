"""Orpheus TTS on a vLLM server (many LoRA voices per GPU), decoded with SNAC."""

from .decoder import SAMPLE_RATE, WindowDecoder, load_snac, random_snac
from .tokens import CodeParser, prompt, token_for
from .tts import TTS, OrpheusOptions

__all__ = [
    "SAMPLE_RATE", "TTS", "CodeParser", "OrpheusOptions", "WindowDecoder", "load_snac",
    "prompt", "random_snac", "token_for",
]  # fmt: skip
