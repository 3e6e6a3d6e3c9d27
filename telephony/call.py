"""The one call interface every transport implements.

A transport owns the wire (WebRTC, SIP/RTP, a Twilio WebSocket, a LiveKit room) and hands the
session an audio input, an audio output and call control. It knows nothing about models.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from .audio_io import PacedAudioOutput, QueueAudioInput


class Call:
    """Base for a live call on some transport."""

    transport: str = "unknown"

    def __init__(self, call_id: str, *, output_rate: int, caller: str | None = None) -> None:
        self.call_id = call_id
        self.caller = caller
        self.audio_input = QueueAudioInput(label=f"{self.transport}-in")
        self.audio_output = PacedAudioOutput(sample_rate=output_rate, label=f"{self.transport}-out")
        self.ended = asyncio.Event()
        self.end_reason = "hangup"
        self.on_dtmf: Callable[[str], None] | None = None
        self.on_event: Callable[[dict[str, object]], None] | None = None
        self.closing = asyncio.Event()
        """Set when the worker shuts down: the session says its closing line and hangs up."""
        self.record_fields: dict[str, object] = {}
        """Transport details worth keeping in the call record's ``call_start``."""

    def mark_ended(self, reason: str) -> None:
        """The far end went away (or we hung up): stop the session."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.audio_input.close()
            self.ended.set()

    def dtmf_received(self, digit: str) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf(digit)

    def send_event(self, event: dict[str, object]) -> None:
        """Push a UI event (transcripts, state) to the caller's client, where there is one."""
        if self.on_event is not None:
            self.on_event(event)

    async def close(self) -> None:
        """Release the transport's resources once the call is over."""
        self.mark_ended(self.end_reason)

    async def hangup(self, reason: str = "agent_hangup") -> None:
        self.mark_ended(reason)

    async def transfer(self, target: str) -> None:
        raise NotImplementedError(f"{self.transport} calls cannot be transferred")

    async def send_dtmf(self, digits: str) -> None:
        raise NotImplementedError(f"{self.transport} calls cannot send DTMF")

    async def warm_transfer(self, target: str, brief: Callable[[], Awaitable[None]]) -> None:
        """Bring ``target`` into the call, let ``brief`` speak to them, then leave the call."""
        raise NotImplementedError(f"{self.transport} calls cannot be warm-transferred")


class CallSlot:
    """One admitted call's place under the limit; released once, however the call ends."""

    def __init__(self, slots: CallSlots) -> None:
        self._slots = slots
        self.held = True

    def release(self) -> None:
        with self._slots._lock:
            if self.held:
                self.held = False
                self._slots._in_use -= 1


class CallSlots:
    """The worker's one count of calls in progress, shared by every transport it serves: it
    admits calls under the limit, and the load report, drain and the active-calls gauge all
    read it.

    :meth:`take` never awaits, so a handler that takes its slot before its first ``await`` can
    never be overtaken: a burst of any size admits exactly ``limit`` calls. It is also
    thread-safe, for the LiveKit worker's jobs, which run as threads.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the call limit must be at least 1")
        self.limit = limit
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def load(self) -> float:
        """0.0 idle .. 1.0 full."""
        return self._in_use / self.limit

    def take(self) -> CallSlot | None:
        """A slot, or None when the worker is full."""
        with self._lock:
            if self._in_use >= self.limit:
                return None
            self._in_use += 1
            return CallSlot(self)
