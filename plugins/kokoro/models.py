"""One Kokoro ONNX session per process, shared by every call."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kokoro_onnx import Kokoro

from .log import logger


@dataclass(frozen=True)
class KokoroOptions:
    """Where the model and voices are, and how to speak."""

    model_path: str
    voices_path: str
    voice: str = "af_heart"
    speed: float = 1.0
    lang: str = "en-us"


_lock = threading.Lock()
_models: dict[tuple[str, str], Kokoro] = {}


def load_kokoro(model_path: str, voices_path: str) -> Kokoro:
    """Load (once) the model and voice table."""
    key = (model_path, voices_path)
    with _lock:
        model = _models.get(key)
        if model is None:
            logger.info("loading kokoro model %s", model_path)
            model = Kokoro(model_path, voices_path)
            _models[key] = model
        return model
