"""Small audio helpers shared by the CLI, transports and tests: WAV in/out, framing."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from livekit import rtc


class AudioFileError(ValueError):
    """A file that is not a PCM WAV we can read."""


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV as mono int16 samples and its sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise
    except (wave.Error, EOFError) as e:
        raise AudioFileError(f"{path} is not a PCM WAV file ({e})") from e
    if width == 2:
        data = np.frombuffer(raw, dtype=np.int16)
    elif width == 1:
        data = ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    elif width == 4:
        data = (np.frombuffer(raw, dtype=np.int32) >> 16).astype(np.int16)
    else:
        raise AudioFileError(f"{path}: unsupported sample width {width * 8} bits")
    if ch > 1:
        data = data.reshape(-1, ch).mean(axis=1).astype(np.int16)
    return data, sr


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono samples (int16, or float in [-1, 1]) as a 16-bit PCM WAV."""
    if samples.dtype != np.int16:
        samples = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.tobytes())


def frames_of(samples: np.ndarray, sample_rate: int, ms: int = 20) -> Iterator[rtc.AudioFrame]:
    """Cut mono int16 samples into ``ms``-long frames (the last one zero-padded)."""
    n = sample_rate * ms // 1000
    for i in range(0, len(samples), n):
        chunk = samples[i : i + n]
        if len(chunk) < n:
            chunk = np.pad(chunk, (0, n - len(chunk)))
        yield rtc.AudioFrame(chunk.astype(np.int16).tobytes(), sample_rate, 1, n)


def frame_samples(frame: rtc.AudioFrame) -> np.ndarray:
    """Mono int16 samples of a frame."""
    data = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        data = data.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    return data
