"""Small audio helpers shared by the CLI, transports and tests: WAV in/out, framing."""

from __future__ import annotations

import wave
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


def resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Mono int16 samples from one rate to another (livekit's resampler, high quality)."""
    if src == dst:
        return samples.astype(np.int16)
    r = rtc.AudioResampler(src, dst, num_channels=1, quality=rtc.AudioResamplerQuality.HIGH)
    frame = rtc.AudioFrame(samples.astype(np.int16).tobytes(), src, 1, samples.size)
    out = [*r.push(frame), *r.flush()]
    if not out:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out])
