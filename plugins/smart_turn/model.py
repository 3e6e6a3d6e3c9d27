"""Score the end of a caller's turn from the last 8 s of their audio.

Smart Turn v3 is a Whisper-encoder classifier: it reads Whisper's 80-band log-mel features of
an 8 s window (the audio right-aligned, zero padding in front) and returns the probability that
the speaker has finished. Its own default threshold is 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
_N_FFT = 400
_HOP = 160
_N_MELS = 80


def _mel_filters() -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    filters: np.ndarray = FeatureExtractor.get_mel_filters(SAMPLE_RATE, _N_FFT, n_mels=_N_MELS)
    return filters.astype(np.float64)


_FILTERS: np.ndarray | None = None
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)  # periodic Hann


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper-style log-mel features (80 x 800) of exactly 8 s of 16 kHz float audio.

    The waveform is normalised to zero mean and unit variance first, as the model was trained.
    """
    global _FILTERS
    if _FILTERS is None:
        _FILTERS = _mel_filters()
    n = SAMPLE_RATE * WINDOW_SECONDS
    if audio.ndim != 1 or audio.size != n:
        raise ValueError(f"expected {n} samples of mono audio, got shape {audio.shape}")
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_FILTERS @ power.T, 1e-10))[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


def window(pcm: np.ndarray) -> np.ndarray:
    """The last 8 s of int16 (or float) 16 kHz audio as float32 in [-1, 1], padded in front."""
    x = pcm.astype(np.float32)
    if pcm.dtype == np.int16:
        x /= 32768.0
    n = SAMPLE_RATE * WINDOW_SECONDS
    if x.size >= n:
        return x[-n:]
    return np.concatenate([np.zeros(n - x.size, dtype=np.float32), x])


class SmartTurn:
    """One ONNX session; :meth:`predict` is thread-safe and takes ~10-60 ms on one core."""

    threshold = 0.5

    def __init__(self, model_path: str | Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no Smart Turn model at {path}; run `python -m worker download-files "
                "--with smart-turn`"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def predict(self, pcm: np.ndarray) -> float:
        """P(the turn has ended) for 16 kHz mono audio ending now (silence included)."""
        features = log_mel(window(pcm))[None]
        out = self._session.run(None, {self._input: features})[0]
        return float(np.asarray(out).reshape(-1)[0])
