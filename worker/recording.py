"""Optional recording of both sides of a call (``records.audio``), off by default.

The caller's audio (as the transport delivered it, resampled to 16 kHz) and the agent's audio
(as it left for the caller, at the transport's rate) go to ``recordings/<call id>.caller.wav``
and ``.agent.wav``, written as the call goes. Both transports feed 20 ms frames on a real-time
clock, silence included, so the two files line up. Files older than
``records.audio_retention_days`` are deleted at startup.
"""

from __future__ import annotations

import threading
import time
import wave
from pathlib import Path

import numpy as np
from livekit import rtc

from plugins.audio import StreamResampler


class CallAudioRecorder:
    def __init__(self, out_dir: Path, call_id: str, agent_rate: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.caller_path = out_dir / f"{call_id}.caller.wav"
        self.agent_path = out_dir / f"{call_id}.agent.wav"
        self._lock = threading.Lock()
        self._caller: wave.Wave_write | None = self._open(self.caller_path, 16000)
        self._agent: wave.Wave_write | None = self._open(self.agent_path, agent_rate)
        self._agent_rate = agent_rate
        self._to_16k = StreamResampler(16000)
        """One resampler for the whole call: a new one per frame left a seam every 20 ms."""

    @staticmethod
    def _open(path: Path, rate: int) -> wave.Wave_write:
        w = wave.open(str(path), "wb")
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        return w

    def caller_frame(self, frame: rtc.AudioFrame) -> None:
        with self._lock:
            if self._caller is not None:
                self._caller.writeframes(self._to_16k.push_frame(frame).tobytes())

    def agent_samples(self, pcm: np.ndarray) -> None:
        with self._lock:
            if self._agent is not None:
                self._agent.writeframes(pcm.astype(np.int16).tobytes())

    def close(self) -> None:
        with self._lock:
            if self._caller is not None:
                self._caller.writeframes(self._to_16k.flush().tobytes())
            for w in (self._caller, self._agent):
                if w is not None:
                    w.close()
            self._caller = self._agent = None


def prune(out_dir: Path, days: float) -> int:
    """Delete recordings older than ``days``; returns how many files went."""
    if not out_dir.is_dir():
        return 0
    cutoff = time.time() - days * 86400
    gone = 0
    for p in out_dir.glob("*.wav"):
        if p.stat().st_mtime < cutoff:
            p.unlink(missing_ok=True)
            gone += 1
    return gone
