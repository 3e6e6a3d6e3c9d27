"""A web caller in a real LiveKit room, on the ``livekit`` rtc SDK: joins with a token that
dispatches the agent, plays caller audio into its microphone track in real time and records
everything the agent's track sends. Used by the end-to-end tests and the benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc

RATE = 48000
FRAME = RATE // 100  # 10 ms


@dataclass
class RoomCaller:
    url: str
    token: str
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[np.ndarray] = field(default_factory=list)
    """The agent's audio, 10 ms blocks at 48 kHz, in arrival order (silence included)."""
    voiced_at: list[float] = field(default_factory=list)
    """``time.time()`` of every block with the agent's voice in it."""
    said_until: float = 0.0
    """When the caller's last queued audio finished playing."""
    _source: rtc.AudioSource = field(
        default_factory=lambda: rtc.AudioSource(RATE, 1, queue_size_ms=40)
    )
    _queue: list[np.ndarray] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(self, limit: float = 30.0) -> None:
        subscribed: asyncio.Future[rtc.RemoteAudioTrack] = asyncio.Future()

        def on_track(track: rtc.Track, *_: object) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO and not subscribed.done():
                subscribed.set_result(track)  # type: ignore[arg-type]

        self.room.on("track_subscribed", on_track)
        await asyncio.wait_for(self.room.connect(self.url, self.token), limit)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, opts)
        self._tasks.append(asyncio.create_task(self._send()))
        agent_track = await asyncio.wait_for(subscribed, limit)
        self._tasks.append(asyncio.create_task(self._listen(agent_track)))

    def say(self, pcm48k: np.ndarray) -> None:
        """Queue int16 mono 48 kHz audio; it goes out in real time after what is queued."""
        padded = np.pad(pcm48k.astype(np.int16), (0, -pcm48k.size % FRAME))
        self._queue.extend(padded.reshape(-1, FRAME))

    async def _send(self) -> None:
        silence = np.zeros(FRAME, np.int16)
        while True:
            block = self._queue.pop(0) if self._queue else silence
            if not self._queue and block is not silence:
                self.said_until = time.time() + 0.01
            frame = rtc.AudioFrame(block.astype(np.int16).tobytes(), RATE, 1, FRAME)
            await self._source.capture_frame(frame)

    async def _listen(self, track: rtc.RemoteAudioTrack) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        async for ev in stream:
            block = np.frombuffer(ev.frame.data, np.int16).copy()
            self.heard.append(block)
            if np.abs(block).mean() > 100:
                self.voiced_at.append(time.time())

    async def until_reply(self, limit: float) -> bool:
        """Wait for agent audio that starts after this call (the reply to what was said)."""
        voiced = len(self.voiced_at)
        deadline = time.monotonic() + limit
        while len(self.voiced_at) == voiced:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def until_quiet(self, quiet: float, limit: float) -> bool:
        """Wait until the agent has spoken and then been silent for ``quiet`` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.voiced_at and time.time() - self.voiced_at[-1] > quiet:
                return True
            await asyncio.sleep(0.05)
        return False

    async def until_said(self) -> None:
        """Wait until everything queued has gone out (``said_until`` is then set)."""
        while True:
            if not self._queue and self.said_until:
                return
            await asyncio.sleep(0.01)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)

    async def leave(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.room.disconnect()
