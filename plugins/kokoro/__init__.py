"""Streaming text-to-speech on Kokoro-82M (ONNX)."""

from .models import KokoroOptions, load_kokoro
from .tts import TTS, UnknownVoiceError

__all__ = ["TTS", "KokoroOptions", "UnknownVoiceError", "load_kokoro"]
