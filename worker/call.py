"""Runs one call: a transport's audio and control, a fresh session, and its call record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice import io
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    ConversationItemAddedEvent,
    UserInputTranscribedEvent,
)

from telephony.call import Call

from . import records
from .agent import VoiceAgent
from .models import Models
from .session import Profile, create_session

logger = logging.getLogger("worker.call")


class _EventTextOutput(io.TextOutput):
    """Streams the agent's words to the caller's client as they are generated."""

    def __init__(self, call: Call) -> None:
        super().__init__(label="events", next_in_chain=None)
        self._call = call

    async def capture_text(self, text: str) -> None:
        self._call.send_event({"type": "agent_partial", "text": text})

    def flush(self) -> None:
        self._call.send_event({"type": "agent_flush"})


def _forward_ui_events(call: Call, session: AgentSession[Any]) -> None:
    def on_user(ev: UserInputTranscribedEvent) -> None:
        call.send_event({"type": "user_transcript", "text": ev.transcript, "final": ev.is_final})

    def on_item(ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        text = getattr(item, "text_content", None)
        role = getattr(item, "role", None)
        if text and role in ("user", "assistant"):
            call.send_event(
                {"type": "turn", "role": "agent" if role == "assistant" else "user",
                 "text": text, "interrupted": bool(getattr(item, "interrupted", False))}
            )  # fmt: skip

    def on_state(ev: AgentStateChangedEvent) -> None:
        call.send_event({"type": "agent_state", "state": ev.new_state})

    session.on("user_input_transcribed", on_user)
    session.on("conversation_item_added", on_item)
    session.on("agent_state_changed", on_state)


async def run_call(models: Models, call: Call, *, profile: Profile = "web") -> records.CallRecord:
    """Hold the conversation until the call ends; every turn lands in the call record."""
    settings = models.settings
    record = records.CallRecord(settings.calls_dir, call.call_id)
    record.start(call.transport, caller=call.caller)
    call.on_dtmf = record.dtmf
    session = create_session(models, profile)
    session.input.audio = call.audio_input
    session.output.audio = call.audio_output
    session.output.transcription = _EventTextOutput(call)
    records.attach(record, session)
    _forward_ui_events(call, session)

    closed = asyncio.Event()

    def on_close(ev: CloseEvent) -> None:
        if not call.ended.is_set():
            call.end_reason = f"session_{getattr(ev.reason, 'value', ev.reason)}"
        closed.set()

    session.on("close", on_close)
    agent = VoiceAgent(settings.agent)
    try:
        await session.start(agent, record=False)
        logger.info("call %s started (%s)", call.call_id, call.transport)
        ended = asyncio.ensure_future(call.ended.wait())
        sess_closed = asyncio.ensure_future(closed.wait())
        await asyncio.wait({ended, sess_closed}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (ended, sess_closed):
            fut.cancel()
    finally:
        with contextlib.suppress(Exception):
            await session.aclose()
        record.end(call.end_reason)
        call.mark_ended(call.end_reason)
        logger.info("call %s ended (%s)", call.call_id, call.end_reason)
    return record
