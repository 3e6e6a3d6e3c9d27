"""The project's one audio toolkit: every transport, plugin and tool uses these.

Mono downmix, int16/float conversion, a stateful stream resampler (one per stream, so frame
edges leave no seams), one-shot resampling, a drift-free pacer for real-time 20 ms loops, the
DTMF digit set, G.711 (through ``audioop``; ``audioop-lts`` on Python 3.13+) and WAV files.
Lives under ``plugins/``, the lowest layer, so the transports and the worker can share it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

try:  # the standard library's until 3.13, then the `audioop-lts` package (same module name)
    import audioop
except ImportError:  # pragma: no cover - only where neither exists
    audioop = None  # type: ignore[assignment]

FRAME_S = 0.02
"""The frame length every transport paces in (20 ms)."""

DTMF_DIGITS = "0123456789*#ABCD"
"""Telephone keys in RFC 4733 event order: a key's index is its event code."""

PHONE_KEYS = DTMF_DIGITS[:12]
"""The keys on a phone's keypad (A-D exist only on special sets)."""


class AudioFileError(ValueError):
    """A file that is not a PCM WAV we can read."""


# --- samples --------------------------------------------------------------------------------


def mono(data: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved int16 samples of ``channels`` channels, averaged to one (int16)."""
    if channels <= 1:
        return data.astype(np.int16, copy=False)
    return data.reshape(-1, channels).mean(axis=1).astype(np.int16)


def frame_samples(frame: rtc.AudioFrame) -> np.ndarray:
    """A frame's samples as mono int16."""
    return mono(np.frombuffer(frame.data, dtype=np.int16), frame.num_channels)


def to_float(pcm: np.ndarray) -> np.ndarray:
    """Int16 samples as float32 in [-1, 1)."""
    return pcm.astype(np.float32) / 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16 (clipped); int16 input is returned as is."""
    if samples.dtype == np.int16:
        return samples
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def frames_to_float(frames: list[rtc.AudioFrame] | rtc.AudioFrame) -> np.ndarray:
    """Mono float32 samples of frames of one rate (empty for none)."""
    if isinstance(frames, rtc.AudioFrame):
        frames = [frames]
    if not frames:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([to_float(frame_samples(f)) for f in frames])


def make_frame(pcm: np.ndarray, rate: int) -> rtc.AudioFrame:
    """One mono frame of int16 samples."""
    pcm = to_int16(pcm)
    return rtc.AudioFrame(pcm.tobytes(), rate, 1, pcm.size)


# --- resampling -----------------------------------------------------------------------------


class StreamResampler:
    """Mono int16 audio of one stream to ``dst`` Hz, keeping the filter's state across frames.

    Making a resampler per frame restarts its filter at every frame edge and leaves a seam (a
    click every 20 ms); one per stream does not. A change of input rate starts a new one."""

    def __init__(
        self, dst: int, quality: rtc.AudioResamplerQuality = rtc.AudioResamplerQuality.MEDIUM
    ) -> None:
        self.dst = dst
        self._quality = quality
        self._src = 0
        self._resampler: rtc.AudioResampler | None = None

    def push(self, pcm: np.ndarray, rate: int) -> np.ndarray:
        """The resampled audio available so far (the filter holds back a few samples)."""
        if rate == self.dst and self._resampler is None:
            return to_int16(pcm)
        if self._resampler is None or rate != self._src:
            tail = self.flush()
            self._src = rate
            self._resampler = rtc.AudioResampler(rate, self.dst, num_channels=1,
                                                 quality=self._quality)  # fmt: skip
            return np.concatenate([tail, self._out(self._resampler.push(make_frame(pcm, rate)))])
        return self._out(self._resampler.push(make_frame(pcm, rate)))

    def push_frame(self, frame: rtc.AudioFrame) -> np.ndarray:
        return self.push(frame_samples(frame), frame.sample_rate)

    def flush(self) -> np.ndarray:
        """What the filter still holds, at the end of a stream or segment."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.int16)
        out = self._out(self._resampler.flush())
        self._resampler = None
        return out

    @staticmethod
    def _out(frames: list[rtc.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([frame_samples(f) for f in frames])


def resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """A whole clip of mono int16 samples from one rate to another (high quality)."""
    if src == dst:
        return samples.astype(np.int16)
    r = StreamResampler(dst, rtc.AudioResamplerQuality.HIGH)
    return np.concatenate([r.push(samples.astype(np.int16), src), r.flush()])


def resample_frames(frames: list[rtc.AudioFrame], dst: int) -> list[rtc.AudioFrame]:
    """Frames of one rate as mono frames at ``dst`` (unchanged when already there)."""
    if not frames or frames[0].sample_rate == dst:
        return frames
    r = StreamResampler(dst, rtc.AudioResamplerQuality.HIGH)
    pcm = np.concatenate([*(r.push_frame(f) for f in frames), r.flush()])
    return [make_frame(pcm, dst)] if pcm.size else []


def start_pcm_stream(emitter: Any, sample_rate: int) -> str:
    """Open a TTS stream's audio emitter for raw mono int16 PCM; the request id it was given."""
    request_id = uuid.uuid4().hex[:12]
    emitter.initialize(request_id=request_id, sample_rate=sample_rate, num_channels=1,
                       mime_type="audio/pcm", stream=True)  # fmt: skip
    return request_id


# --- pacing ---------------------------------------------------------------------------------


class Pacer:
    """Wakes every ``period`` seconds on an absolute clock, so a real-time loop does not drift
    when one round takes longer than usual (it catches up instead)."""

    def __init__(self, period: float = FRAME_S) -> None:
        self.period = period
        self._start: float | None = None
        self.ticks = 0

    async def wait(self) -> None:
        """Sleep until the next tick (the first is one period after the first call)."""
        if self._start is None:
            self._start = time.monotonic()
        self.ticks += 1
        await asyncio.sleep(max(0.0, self._start + self.ticks * self.period - time.monotonic()))


# --- G.711 ----------------------------------------------------------------------------------


def _codec() -> object:
    if audioop is None:
        raise RuntimeError("G.711 needs audioop: pip install audioop-lts (Python 3.13+)")
    return audioop


def g711_encode(samples: np.ndarray, law: str = "ulaw") -> bytes:
    """16-bit PCM samples to G.711 bytes (``law`` is ``"ulaw"`` or ``"alaw"``)."""
    codec = _codec()
    data = to_int16(samples).astype("<i2").tobytes()
    return codec.lin2ulaw(data, 2) if law == "ulaw" else codec.lin2alaw(data, 2)  # type: ignore[attr-defined]


def g711_decode(data: bytes, law: str = "ulaw") -> np.ndarray:
    """G.711 bytes to 16-bit PCM samples."""
    codec = _codec()
    pcm = codec.ulaw2lin(data, 2) if law == "ulaw" else codec.alaw2lin(data, 2)  # type: ignore[attr-defined]
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


# --- WAV files ------------------------------------------------------------------------------


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
    return mono(data, ch), sr


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono samples (int16, or float in [-1, 1]) as a 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(to_int16(samples).tobytes())
