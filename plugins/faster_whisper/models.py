"""One Whisper model per process, shared by every call."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from faster_whisper import WhisperModel

from .log import logger


@dataclass(frozen=True)
class WhisperOptions:
    """How the model is loaded and decoded."""

    model: str
    """A CTranslate2 model folder or a hub model name."""
    language: str = "en"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    num_workers: int = 2
    beam_size: int = 1


_lock = threading.Lock()
_models: dict[tuple[str, str, str, int, int], WhisperModel] = {}


def load_model(opts: WhisperOptions) -> WhisperModel:
    """Load (once) and return the model for these options."""
    key = (opts.model, opts.device, opts.compute_type, opts.cpu_threads, opts.num_workers)
    with _lock:
        model = _models.get(key)
        if model is None:
            logger.info(
                "loading whisper model %s on %s (%s)", opts.model, opts.device, opts.compute_type
            )
            model = WhisperModel(
                opts.model,
                device=opts.device,
                compute_type=opts.compute_type,
                cpu_threads=opts.cpu_threads,
                num_workers=opts.num_workers,
            )
            _models[key] = model
        return model
