"""Runs one call: a transport's audio and control, a fresh session, and its call record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import NOT_GIVEN, AgentSession, llm
from livekit.agents.voice import io, room_io
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    ConversationItemAddedEvent,
    UserInputTranscribedEvent,
)
from livekit.agents.voice.transcription import TranscriptSynchronizer

from telephony.call import Call

from . import memory, records
from .agent import VoiceAgent
from .metrics import CallObserver
from .models import Models
from .phrases import Phrases
from .recording import CallAudioRecorder
from .session import Profile, TurnProfile, create_session, text_veto_detector
from .turns import BackchannelPolicy, SpeculationTracker
from .turns.detector import TextVetoTurnDetector

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


@dataclass
class CallResult:
    """What a finished call left behind, for the harness and tests."""

    record: records.CallRecord
    observer: CallObserver
    speculation: SpeculationTracker
    chat: list[llm.ChatMessage]
    turn_veto: TextVetoTurnDetector | None = None


async def run_call(
    models: Models,
    call: Call,
    *,
    profile: Profile = "web",
    turn_profile: TurnProfile | None = None,
    room: rtc.Room | None = None,
    participant_identity: str | None = None,
    on_agent: Callable[[VoiceAgent], None] | None = None,
) -> CallResult:
    """Hold the conversation until the call ends; every turn lands in the call record.

    With ``room`` the session's audio is the framework's room I/O, subscribed to
    ``participant_identity``; otherwise it is the transport's own audio input and output.
    """
    settings = models.settings
    turn_profile = turn_profile or settings.turn.profile
    ours = turn_profile == "default"
    record = records.CallRecord(
        settings.calls_dir, call.call_id, redact_numbers=settings.records.redact_numbers
    )
    record.start(
        call.transport, caller=call.caller, turn_profile=turn_profile, **call.record_fields
    )

    def on_dtmf(digit: str) -> None:
        record.dtmf(digit)
        agent.dtmf(digit)

    call.on_dtmf = on_dtmf
    recorder: CallAudioRecorder | None = None
    if settings.records.audio and room is None:
        recorder = CallAudioRecorder(settings.recordings_dir, call.call_id, call.audio_output.rate)
        call.audio_input.taps.append(recorder.caller_frame)
        call.audio_output.taps.append(recorder.agent_samples)
    veto = text_veto_detector(models, turn_profile)
    session = create_session(
        models, profile, turn_profile, session_id=call.call_id, turn_detector=veto
    )
    if veto is not None:
        veto.hold_with(
            lambda d: session.update_options(endpointing_opts={"max_delay": d}),
            normal=settings.turn.max_endpointing_delay,
            held=settings.turn.text_hold_delay,
        )
    sync: TranscriptSynchronizer | None = None
    if room is None:
        session.input.audio = call.audio_input
        # the synchroniser tells the session how much of an interrupted reply was heard
        sync = TranscriptSynchronizer(
            next_in_chain_audio=call.audio_output, next_in_chain_text=_EventTextOutput(call)
        )
        session.output.audio = sync.audio_output
        session.output.transcription = sync.text_output
    speculation = SpeculationTracker(cancel_on_speech_start=ours)
    observer = CallObserver(
        record=record, output=call.audio_output if room is None else None, speculation=speculation
    )
    observer.attach(session, call.transport)
    records.attach(record, session, annotate=observer.annotate)
    _forward_ui_events(call, session)

    closed = asyncio.Event()

    def on_close(ev: CloseEvent) -> None:
        if not call.ended.is_set():
            call.end_reason = f"session_{getattr(ev.reason, 'value', ev.reason)}"
        closed.set()

    session.on("close", on_close)
    agent = VoiceAgent(
        settings.agent,
        backchannels=BackchannelPolicy(
            settings.turn.backchannels, max_seconds=settings.turn.backchannel_max_seconds,
            max_confidence=settings.turn.backchannel_max_confidence,
            max_distance=settings.turn.backchannel_max_distance,
            prompt=settings.turn.backchannel_prompt,
        ) if ours else None,
        speculation=speculation,
        turn_veto=veto,
        call=call,
        transfer_target=(
            settings.sip.transfer_target if call.transport == "sip"
            else settings.livekit.transfer_target if call.transport == "livekit-sip"
            else None
        ),
        warm_transfer=call.transport == "livekit-sip" and settings.livekit.warm_transfer,
        keypad=settings.agent.keypad_tool and call.transport in ("sip", "livekit-sip"),
        phrases=models.phrases,
        prefill=ours and settings.llm.prefill_while_speaking,
    )  # fmt: skip
    agent.on_backchannel = observer.backchannel_heard
    if on_agent is not None:
        on_agent(agent)
    try:
        if room is None:
            await session.start(agent, record=False)
        else:
            who = participant_identity or NOT_GIVEN
            await session.start(
                agent, room=room, record=False,
                room_options=room_io.RoomOptions(participant_identity=who),
            )  # fmt: skip
        speculation.attach(session)
        logger.info("call %s started (%s)", call.call_id, call.transport)
        ended = asyncio.ensure_future(call.ended.wait())
        sess_closed = asyncio.ensure_future(closed.wait())
        closing = asyncio.ensure_future(call.closing.wait())
        done, _ = await asyncio.wait(
            {ended, sess_closed, closing}, return_when=asyncio.FIRST_COMPLETED
        )
        if closing in done and not call.ended.is_set():
            await _say_closing(session, call, settings.agent.closing, models.phrases)
        for fut in (ended, sess_closed, closing):
            fut.cancel()
    finally:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.aclose(), 10)
            if sync is not None:
                with contextlib.suppress(Exception):
                    await sync.aclose()  # its segment tasks would otherwise outlive the call
        finally:  # even when shutdown cancels us mid-close, the record gets its end
            observer.detach()
            if recorder is not None:
                recorder.close()
            record.end(call.end_reason)
            call.mark_ended(call.end_reason)
            logger.info("call %s ended (%s)", call.call_id, call.end_reason)
    await asyncio.to_thread(memory.release)
    chat = [m for m in session.history.items if isinstance(m, llm.ChatMessage)]
    return CallResult(
        record=record, observer=observer, speculation=speculation, chat=chat, turn_veto=veto
    )


async def _say_closing(
    session: AgentSession[Any], call: Call, text: str, phrases: Phrases | None
) -> None:
    """The worker is going away: tell the caller, then hang up (bounded, never blocks exit)."""
    logger.info("call %s: shutting down, saying the closing line", call.call_id)
    try:
        session.interrupt()
        if text:
            handle = (phrases or Phrases(None)).say(
                session, text, allow_interruptions=False, add_to_chat_ctx=True
            )
            await asyncio.wait_for(handle.wait_for_playout(), 20)
    except Exception as e:  # shutting down regardless
        logger.warning("call %s: closing line failed: %s", call.call_id, e)
    await call.hangup("worker_shutdown")
