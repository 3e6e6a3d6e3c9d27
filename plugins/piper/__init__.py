"""Piper (VITS) as a light fallback ``tts.TTS`` (the `fallback` extra)."""

from .tts import TTS, load_voice

__all__ = ["TTS", "load_voice"]
