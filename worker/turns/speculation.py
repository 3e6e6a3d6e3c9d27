"""Speculative replies in the snooze window: cancelled at once when the caller resumes, counted.

The framework's preemptive generation starts the LLM (and, with ``preemptive_tts``, the TTS)
as soon as a final transcript arrives before the turn is committed. By default it cancels that
work only when a *changed* final transcript arrives, a second or more after the caller has
resumed speaking, so GPU time is spent on a reply that is already stale. This tracker cancels
it on VAD speech start instead and counts what speculation did and what it threw away.

It hooks the session's current ``AgentActivity`` through :mod:`plugins.lk_private`:
livekit-agents has no public hook for this yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.events import UserStateChangedEvent

from plugins.lk_private import (
    cancel_preemptive_generation,
    hook_preemptive_generation,
    pending_preemptive_generation,
    session_activity,
)

logger = logging.getLogger("worker.turns.speculation")


@dataclass
class SpeculationStats:
    started: int = 0
    used: int = 0
    cancelled: int = 0
    cancelled_on_speech_start: int = 0
    dropped_after_commit: int = 0
    """Replies whose turn was committed while the caller was only pausing: the caller went on
    before a word of them was heard, so they were cut unheard (counted in ``cancelled``)."""
    skipped_while_speaking: int = 0
    wasted_tokens: int = 0
    wasted_audio_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wasted_audio_s"] = round(self.wasted_audio_s, 3)
        return d


@dataclass
class _Work:
    handle: Any
    tokens: int = 0
    audio_s: float = 0.0


@dataclass
class SpeculationTracker:
    """Per-session speculation policy and bookkeeping."""

    cancel_on_speech_start: bool = True
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    preflight: str | None = None
    """The STT's latest preflight transcript, set by the agent's STT node: words the STT saw
    silence after, with no speech since. The session's VAD may still say "speaking" then
    (it waits longer for silence): that is lag, not the caller going on."""
    _work: dict[str, _Work] = field(default_factory=dict)
    _session: AgentSession[Any] | None = None
    _hooked: Any = None

    def attach(self, session: AgentSession[Any]) -> None:
        """Hook the session (call after ``session.start``)."""
        self._session = session
        session.on("user_state_changed", self._on_user_state)
        self._hook_activity()

    def _hook_activity(self) -> None:
        assert self._session is not None
        activity = session_activity(self._session)
        if activity is None or activity is self._hooked:
            return
        self._hooked = activity

        def on_preemptive_generation(original: Callable[[Any], None], info: Any) -> None:
            session = self._session
            fresh = self.preflight is not None and info.new_transcript.endswith(self.preflight)
            if (
                self.cancel_on_speech_start
                and session is not None
                and session.user_state == "speaking"
                and not fresh
            ):
                # a final transcript of the words before a pause arrives after the caller has
                # resumed: this is not the snooze window, and the reply would be stale
                self.stats.skipped_while_speaking += 1
                return
            before = pending_preemptive_generation(activity)
            original(info)
            after = pending_preemptive_generation(activity)
            if after is not None and after is not before:
                self._started(after.speech_handle)

        hook_preemptive_generation(activity, on_preemptive_generation)

    def _started(self, handle: Any) -> None:
        self.stats.started += 1
        self._work[handle.id] = _Work(handle=handle)
        handle.add_done_callback(lambda _h: self.settle())

    def settle(self) -> SpeculationStats:
        """Classify every speculative reply whose fate is known; return the totals."""
        for hid, work in list(self._work.items()):
            handle = work.handle
            if not handle.done():
                continue  # its fate (heard, cut unheard, dropped) is not known yet
            if handle.scheduled and _unheard(handle):
                self.stats.dropped_after_commit += 1
                self.stats.cancelled += 1
                self.stats.wasted_tokens += work.tokens
                self.stats.wasted_audio_s += work.audio_s
            elif handle.scheduled:
                self.stats.used += 1
            else:
                self.stats.cancelled += 1
                self.stats.wasted_tokens += work.tokens
                self.stats.wasted_audio_s += work.audio_s
            del self._work[hid]
        return self.stats

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        if ev.new_state != "speaking" or not self.cancel_on_speech_start:
            return
        self._hook_activity()
        activity = self._hooked
        if pending_preemptive_generation(activity) is not None:
            logger.debug("caller resumed speaking: cancelling the speculative reply")
            self.stats.cancelled_on_speech_start += 1
            cancel_preemptive_generation(activity)

    # -- accounting, fed by the agent's llm_node and tts_node ------------------------------

    def note_tokens(self, handle_id: str | None, n: int = 1) -> None:
        if handle_id is not None and handle_id in self._work:
            self._work[handle_id].tokens += n

    def note_audio(self, handle_id: str | None, seconds: float) -> None:
        if handle_id is not None and handle_id in self._work:
            self._work[handle_id].audio_s += seconds


def _unheard(handle: Any) -> bool:
    """An interrupted reply that left nothing in the history: not a word of it played."""
    if not handle.interrupted:
        return False
    return not any(
        getattr(item, "role", None) == "assistant" and getattr(item, "text_content", None)
        for item in handle.chat_items
    )
