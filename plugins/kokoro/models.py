"""One Kokoro ONNX session per process, shared by every call."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort
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
    threads: int = 0
    """onnxruntime intra-op threads; 0 is its default, one per core."""


_lock = threading.Lock()
_models: dict[tuple[str, str, int], Kokoro] = {}


def load_kokoro(model_path: str, voices_path: str, threads: int = 0) -> Kokoro:
    """Load (once) the model and voice table, on ``threads`` threads (0: one per core)."""
    key = (model_path, voices_path, threads)
    with _lock:
        model = _models.get(key)
        if model is None:
            logger.info("loading kokoro model %s (%s threads)", model_path, threads or "auto")
            if threads:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                session = ort.InferenceSession(
                    model_path, sess_options=opts, providers=["CPUExecutionProvider"]
                )
                model = Kokoro.from_session(session, voices_path)
            else:
                model = Kokoro(model_path, voices_path)
            model.sess = _ShrinkingSession(model.sess)
            _models[key] = model
        return model


class _ShrinkingSession:
    """The ONNX session, with its CPU memory arena shrunk back after every run.

    onnxruntime's arena keeps every block it ever allocated and grows in power-of-two steps
    to fit the longest piece of text synthesised so far, so a worker taking call after call
    climbed by ~130 MB at a time. Shrinking after each run hands the blocks back to the C
    heap (which the worker trims after each call) at ~0.5% of synthesis time in a paired
    comparison; turning the arena off instead tripled peak memory.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self._run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
