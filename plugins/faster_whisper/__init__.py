"""Streaming speech-to-text on faster-whisper (CTranslate2 Whisper)."""

from .models import WhisperOptions, load_model
from .stt import STT, SpeechStream

__all__ = ["STT", "SpeechStream", "WhisperOptions", "load_model"]
