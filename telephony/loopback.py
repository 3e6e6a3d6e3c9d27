"""An in-process transport: a scripted caller plays audio in real time and hears the agent.

Used by tests and the call harness to drive a real ``AgentSession`` without a network. Both
directions are paced like a phone line: 20 ms frames in, 20 ms frames out.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from plugins.audio import Pacer, make_frame

from .call import Call

FRAME_MS = 20


class LoopbackCall(Call):
    """A call whose far end is code in the same process."""

    transport = "loopback"

    def __init__(self, call_id: str, *, input_rate: int = 16000, output_rate: int = 24000) -> None:
        super().__init__(call_id, output_rate=output_rate, caller="loopback")
        self.input_rate = input_rate
        self.output_rate = output_rate
        self._heard: list[np.ndarray] = []
        self._listener: asyncio.Task[None] | None = None
        self.t0 = time.time()
        self.agent_turns = 0
        self.agent_speeches = 0
        self.agent_state = "initializing"

    def start_listening(self) -> None:
        """Pull the agent's audio in real time until the call ends."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        n = self.output_rate * FRAME_MS // 1000
        pace = Pacer(FRAME_MS / 1000)
        while not self.ended.is_set():
            self._heard.append(self.audio_output.read(n))
            await pace.wait()

    async def play(self, samples: np.ndarray, rate: int | None = None) -> None:
        """Send int16 mono samples to the agent at real-time pace."""
        rate = rate or self.input_rate
        n = rate * FRAME_MS // 1000
        pace = Pacer(FRAME_MS / 1000)
        for off in range(0, len(samples), n):
            chunk = samples[off : off + n]
            if len(chunk) < n:
                chunk = np.pad(chunk, (0, n - len(chunk)))
            self.audio_input.push(make_frame(chunk, rate))
            await pace.wait()

    async def silence(self, seconds: float) -> None:
        await self.play(np.zeros(int(seconds * self.input_rate), dtype=np.int16))

    def send_event(self, event: dict[str, object]) -> None:
        """Kept, so a scripted caller can wait on what the agent did (and passed on)."""
        if event.get("type") == "turn" and event.get("role") == "agent":
            self.agent_turns += 1
        elif event.get("type") == "agent_state":
            self.agent_state = str(event.get("state"))
            if self.agent_state == "speaking":
                self.agent_speeches += 1
        super().send_event(event)

    async def silence_until_reply(self, replies: int, limit: float = 90.0) -> bool:
        """Stay silent, in real time, until the agent has finished ``replies`` turns (the
        greeting counts) and stopped speaking, or ``limit`` seconds passed. A caller who
        waits for the reply, not for a fixed time: how long a reply takes is the machine's
        business, not the test's."""
        deadline = time.monotonic() + limit
        step = np.zeros(self.input_rate * 100 // 1000, dtype=np.int16)
        while time.monotonic() < deadline and not self.ended.is_set():
            done = self.agent_turns >= replies and self.agent_speeches >= replies
            if done and self.agent_state != "speaking":
                return True
            await self.play(step)
        return self.agent_turns >= replies

    async def silence_until_next_reply(self, limit: float = 90.0) -> bool:
        """Stay silent until the agent has spoken once more and finished, or ``limit``."""
        turns, speeches = self.agent_turns, self.agent_speeches
        deadline = time.monotonic() + limit
        step = np.zeros(self.input_rate * 100 // 1000, dtype=np.int16)
        while time.monotonic() < deadline and not self.ended.is_set():
            more = self.agent_turns > turns and self.agent_speeches > speeches
            if more and self.agent_state != "speaking":
                return True
            await self.play(step)
        return False

    def heard(self) -> np.ndarray:
        """Everything the caller has heard so far (int16 at ``output_rate``)."""
        return np.concatenate(self._heard) if self._heard else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        self.mark_ended(self.end_reason)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
