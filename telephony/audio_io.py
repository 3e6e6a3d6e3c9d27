"""Transport-neutral audio I/O for an ``AgentSession``.

Every transport (browser WebRTC, SIP/RTP, Twilio, a test harness) pushes caller audio into a
:class:`QueueAudioInput` and pulls agent audio out of a :class:`PacedAudioOutput` at its own
real-time pace (one 20 ms frame per packet). The output tracks what was actually played, so
the session knows how much of an interrupted reply the caller heard, and it can pause and
resume in place for barge-in.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import numpy as np
from livekit import rtc
from livekit.agents.voice import io

from plugins.audio import StreamResampler


class QueueAudioInput(io.AudioInput):
    """Caller audio pushed by a transport; bounded so a stalled session cannot grow memory."""

    def __init__(self, *, label: str = "caller", max_frames: int = 500) -> None:
        super().__init__(label=label)
        self._q: asyncio.Queue[rtc.AudioFrame | None] = asyncio.Queue()
        self._max = max_frames
        self._closed = False
        self.dropped = 0
        self.taps: list[Callable[[rtc.AudioFrame], None]] = []
        """Called with every frame pushed (call recording)."""

    def push(self, frame: rtc.AudioFrame) -> None:
        if self._closed:
            return
        for tap in self.taps:
            tap(frame)
        if self._q.qsize() >= self._max:
            self._q.get_nowait()
            self.dropped += 1
        self._q.put_nowait(frame)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._q.put_nowait(None)

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self._q.get()
        if frame is None:
            self._q.put_nowait(None)
            raise StopAsyncIteration
        return frame


class PacedAudioOutput(io.AudioOutput):
    """Agent audio buffered for a transport that reads it in real time."""

    def __init__(self, *, sample_rate: int, label: str = "paced") -> None:
        super().__init__(
            label=label,
            capabilities=io.AudioOutputCapabilities(pause=True),
            sample_rate=sample_rate,
        )
        self._rate = sample_rate
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._buffered = 0
        self._resampler = StreamResampler(sample_rate)
        self._in_segment = False
        self._flushed = False
        self._discarding = False
        self._played = 0
        self._started = False
        self._paused = False
        self.first_audio_at: float | None = None
        """Wall-clock time the current segment's first sample left for the caller."""
        self.listeners: list[Callable[[str, float], None]] = []
        """Called with ("start" | "pause" | "resume" | "clear" | "done", wall-clock time)."""
        self.taps: list[Callable[[np.ndarray], None]] = []
        """Called with every block the transport takes, silence included (call recording)."""

    def _notify(self, what: str) -> None:
        now = time.time()
        for listener in self.listeners:
            listener(what, now)

    # -- the session side ------------------------------------------------------------------

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self._discarding:
            return
        await super().capture_frame(frame)
        if not self._in_segment:
            self._in_segment, self._flushed, self._played, self._started = True, False, 0, False
            self.first_audio_at = None
        samples = self._convert(frame)
        if samples.size:
            self._chunks.append(samples)
            self._buffered += samples.size

    def _convert(self, frame: rtc.AudioFrame) -> np.ndarray:
        return self._resampler.push_frame(frame)

    def flush(self) -> None:
        super().flush()
        if self._discarding:
            self._discarding = False
            return
        if not self._in_segment:
            return
        tail = self._resampler.flush()
        if tail.size:
            self._chunks.append(tail)
            self._buffered += tail.size
        self._flushed = True
        if self._buffered == 0:  # everything was already played (synthesis slower than playout)
            if self._started:
                self._notify("done")
            self._finish(interrupted=False)

    def clear_buffer(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        self._resampler = StreamResampler(self._rate)  # what it held belongs to the cut reply
        self._paused = False  # a cut reply leaves nothing to resume
        if self._in_segment:
            # frames of this segment may still arrive until the session flushes it
            self._discarding = not self._flushed
            self._notify("clear")
            self._finish(interrupted=True)

    @property
    def rate(self) -> int:
        """The sample rate the transport reads at."""
        return self._rate

    @property
    def audible(self) -> bool:
        """A reply is playing (or paused mid-way): the caller has heard part of it."""
        return self._in_segment and self._started

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            if self.audible:
                self._notify("pause")

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.audible:
                self._notify("resume")

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def speaking(self) -> bool:
        return self._buffered > 0 and not self._paused

    def _finish(self, *, interrupted: bool) -> None:
        self._in_segment = False
        self.on_playback_finished(
            playback_position=self._played / self._rate, interrupted=interrupted
        )

    # -- the transport side ----------------------------------------------------------------

    def read(self, n: int) -> np.ndarray:
        """Take the next ``n`` samples to send (silence when paused or idle)."""
        out = self._read(n)
        for tap in self.taps:
            tap(out)
        return out

    def _read(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int16)
        if self._paused or not self._buffered:
            return out
        filled = 0
        while filled < n and self._chunks:
            head = self._chunks[0]
            take = min(n - filled, head.size)
            out[filled : filled + take] = head[:take]
            if take == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[take:]
            filled += take
        self._buffered -= filled
        if filled and self._in_segment:
            if not self._started:
                self._started = True
                self.first_audio_at = time.time()
                self._notify("start")
                self.on_playback_started(created_at=self.first_audio_at)
            self._played += filled
            if self._flushed and self._buffered == 0:
                self._notify("done")
                self._finish(interrupted=False)
        return out
