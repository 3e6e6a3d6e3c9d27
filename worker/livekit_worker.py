"""The worker registered with a LiveKit server (used when ``LIVEKIT_URL`` is set).

Jobs run as threads of this process so that every call shares the one set of models loaded
in prewarm; each job gets its own session, LLM client and call record. The worker reports its
load as active calls over ``livekit.max_calls``, so LiveKit stops sending jobs to a full
worker, and on SIGTERM it drains: no new jobs, active calls go on up to
``drain_timeout`` seconds.

A phone caller (a SIP participant) gets the telephony profile and a :class:`CallInfo` from its
attributes, and the agent waits until ``sip.callStatus`` is ``active`` before greeting. On an
outbound call (job metadata ``{"outbound": true}``) the first seconds of the callee's audio go
to answering-machine detection: a machine gets ``livekit.voicemail_message`` after its beep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobProcess
from livekit.agents.cli import proto
from livekit.agents.cli.cli import _run_worker

from telephony import wire
from telephony.amd import AmdResult, AnsweringMachineDetector
from telephony.livekit_call import CallInfo, LiveKitCall, is_sip, wait_until_active

from . import records
from .agent import VoiceAgent
from .call import CallResult, run_call
from .models import Models, load_llm, load_models
from .settings import Settings

logger = logging.getLogger("worker.livekit")

_models_lock = threading.Lock()
_shared: Models | None = None
_active_calls = 0


def _shared_models(settings: Settings) -> Models:
    """Load the heavy models once per process, from whichever thread asks first."""
    global _shared
    with _models_lock:
        if _shared is None:
            _shared = asyncio.run(load_models(settings, ("vad", "turn", "stt", "tts")))
        return _shared


def api_factory(settings: Settings) -> Callable[[], api.LiveKitAPI]:
    lk = settings.livekit

    def make() -> api.LiveKitAPI:
        secret = lk.api_secret.get_secret_value() if lk.api_secret else None
        url = (lk.url or "").replace("wss://", "https://").replace("ws://", "http://")
        return api.LiveKitAPI(url, lk.api_key, secret)

    return make


async def _frames_from(participant: rtc.RemoteParticipant) -> AsyncIterator[rtc.AudioFrame]:
    stream = rtc.AudioStream.from_participant(
        participant=participant, track_source=rtc.TrackSource.SOURCE_MICROPHONE,
        sample_rate=8000, num_channels=1,
    )  # fmt: skip
    try:
        async for ev in stream:
            yield ev.frame
    finally:
        await stream.aclose()


async def detect_machine(
    frames: AsyncIterator[rtc.AudioFrame], *, limit: float = 20.0
) -> AmdResult:
    """Listen to the callee until the detector decides; for a machine, also wait for its beep
    (or a second of silence) so the message lands on the recording."""
    det: AnsweringMachineDetector | None = None
    beeps: AnsweringMachineDetector | None = None
    result: AmdResult | None = None
    quiet = 0.0
    deadline = time.monotonic() + limit
    async for frame in frames:
        if det is None:
            det = AnsweringMachineDetector(frame.sample_rate)
        pcm = _mono(frame)
        if result is None:
            result = det.push(pcm)
            if result is not None and (result.kind != "machine" or det.beep_heard):
                return result
        else:  # a machine: wait for the beep or the end of its greeting
            if beeps is None:
                beeps = AnsweringMachineDetector(
                    frame.sample_rate, machine_greeting=1e9, human_greeting=0, max_wait=1e9
                )
            beeps.push(pcm)
            loud = float((pcm.astype("float64") ** 2).mean()) ** 0.5 > 300
            quiet = 0.0 if loud else quiet + frame.duration
            if beeps.beep_heard or quiet >= 1.0:
                return result
        if time.monotonic() > deadline:
            break
    return result or AmdResult("unknown", "no audio", 0.0)


def _mono(frame: rtc.AudioFrame) -> Any:
    import numpy as np

    data = np.frombuffer(frame.data, dtype=np.int16)
    return data.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)


async def handle_participant(
    models: Models,
    room: Any,
    participant: Any,
    *,
    make_api: Callable[[], api.LiveKitAPI],
    metadata: str = "",
    custom_io: bool = False,
    on_call: Callable[[LiveKitCall], None] | None = None,
) -> CallResult | None:
    """Run one caller in a room, from waiting for the phone to be answered to hanging up.

    With ``custom_io`` the session's audio is the call's own input and output (tests drive
    them) instead of the room's tracks; everything else is as in production.
    """
    global _active_calls
    settings = models.settings
    sip = is_sip(participant)
    attrs = dict(participant.attributes)
    info = CallInfo.from_attributes(attrs) if sip else CallInfo()
    call = LiveKitCall(
        records.new_call_id(), room_name=room.name, participant_identity=participant.identity,
        sip=sip, api_factory=make_api, info=info,
        local_participant=room.local_participant if room.isconnected() else None,
        outbound_trunk=settings.livekit.outbound_trunk,
    )  # fmt: skip
    if not sip:
        call.caller = participant.identity
    if on_call is not None:
        on_call(call)

    def on_dtmf(ev: rtc.SipDTMF) -> None:
        if ev.participant is None or ev.participant.identity == participant.identity:
            call.dtmf_received(ev.digit)

    def on_left(p: Any) -> None:
        if p.identity == participant.identity:
            call.mark_ended("caller_hangup")

    room.on("sip_dtmf_received", on_dtmf)
    room.on("participant_disconnected", on_left)
    _active_calls += 1
    try:
        if sip and not await wait_until_active(room, participant, settings.livekit.greet_timeout):
            logger.info("phone call in %s never became active; not greeting", room.name)
            return None
        voicemail: str | None = None
        outbound = _outbound(metadata)
        if sip and outbound:
            frames = call.audio_input.__aiter__() if custom_io else _frames_from(participant)
            amd = await detect_machine(frames)
            logger.info("outbound call answered by: %s (%s)", amd.kind, amd.reason)
            if amd.kind == "machine":
                voicemail = settings.livekit.voicemail_message

        def on_agent(agent: VoiceAgent) -> None:
            agent.voicemail = voicemail

        return await run_call(
            models, call, profile="telephony" if sip else "web",
            room=None if custom_io else room, participant_identity=participant.identity,
            on_agent=on_agent,
        )  # fmt: skip
    finally:
        _active_calls -= 1
        room.off("sip_dtmf_received", on_dtmf)
        room.off("participant_disconnected", on_left)


def _outbound(metadata: str) -> bool:
    with contextlib.suppress(wire.WireError, AttributeError):
        return bool(wire.load_json(metadata or "{}", "job metadata").get("outbound"))
    return False


def current_load(settings: Settings) -> float:
    """What the worker reports to LiveKit: 1.0 means full (no more jobs are sent)."""
    return _active_calls / settings.livekit.max_calls


def build_server(settings: Settings) -> AgentServer:
    lk = settings.livekit

    def prewarm(proc: JobProcess) -> None:
        proc.userdata["models"] = _shared_models(settings)

    def load() -> float:
        return current_load(settings)

    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD, setup_fnc=prewarm, load_fnc=load,
        load_threshold=1.0, drain_timeout=int(settings.drain_timeout),
    )  # fmt: skip

    async def entrypoint(ctx: JobContext) -> None:
        shared = await asyncio.to_thread(_shared_models, settings)
        llm, embedded = await load_llm(settings)
        models = Models(
            settings=settings, vad=shared.vad, turn_detector=shared.turn_detector,
            stt=shared.stt, tts=shared.tts, llm=llm, embedded_llm=embedded,
        )  # fmt: skip
        try:
            await ctx.connect()
            participant = await ctx.wait_for_participant()
            await handle_participant(
                models, ctx.room, participant, make_api=api_factory(settings),
                metadata=ctx.job.metadata,
            )  # fmt: skip
        finally:
            await models.aclose()
            ctx.shutdown("call ended")

    server.rtc_session(entrypoint, agent_name=lk.agent_name)
    return server


def run(settings: Settings, *, dev: bool) -> None:
    lk = settings.livekit
    secret: Any = lk.api_secret.get_secret_value() if lk.api_secret else None
    _run_worker(
        build_server(settings),
        proto.CliArgs(
            log_level=settings.log_level, url=lk.url, api_key=lk.api_key, api_secret=secret,
            dev=dev, log_format="colored" if dev else "json",
        ),
    )  # fmt: skip
