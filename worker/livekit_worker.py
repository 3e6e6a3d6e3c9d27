"""The worker registered with a LiveKit server (used when ``LIVEKIT_URL`` is set).

Jobs run as threads of this process so that every call shares the one set of models
(:class:`ModelHost`); each job gets its own session and call record. One call registry
(``telephony.call.CallSlots``) admits calls, reports the load (active calls over
``max_calls``, so LiveKit stops sending jobs to a full worker) and feeds the
active-calls gauge. On SIGTERM the framework drains: no new jobs, active calls go on up to
``drain_timeout`` seconds.

A phone caller (a SIP participant) gets the telephony profile and a :class:`CallInfo` from its
attributes. The agent's track is published at once and only the greeting waits until
``sip.callStatus`` is ``active``. On an outbound call (job metadata ``{"outbound": true}``) the
first seconds of the callee's audio go to answering-machine detection: a machine gets
``livekit.voicemail_message`` after its beep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobProcess, llm
from livekit.agents.cli import proto

from plugins.audio import frame_samples
from plugins.http import close_loop_sessions
from plugins.lk_private import run_agent_server
from telephony import wire
from telephony.amd import AmdResult, AnsweringMachineDetector
from telephony.call import CallSlots
from telephony.livekit_call import CallInfo, LiveKitCall, is_sip, wait_until_active

from . import metrics, records
from .agent import VoiceAgent
from .call import CallResult, run_call
from .guardian import Guardian
from .models import Models, load_models, make_router
from .settings import Settings

logger = logging.getLogger("worker.livekit")


class ModelHost:
    """The worker's models, loaded once per process and shared by every job.

    Jobs run as threads, each on its own event loop, so the models live on a loop of their own
    in a daemon thread that lasts as long as the process: the embedded LLM server's supervisor
    runs there, and a server started from it is not tied to a job's thread (Linux's parent-death
    signal follows the thread that started a child). Every job gets the same VAD, turn detector,
    STT, TTS (with fallbacks), LLM and embedded server; the plugins keep one HTTP session per
    loop (``plugins.http``), and a job closes its own when it ends. The router's Redis client
    is per job, as a Redis connection belongs to one loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: Models | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, settings: Settings) -> Models:
        with self._lock:
            if self._models is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="models", daemon=True).start()
                self._loop = loop
                self._models = asyncio.run_coroutine_threadsafe(
                    _load_shared(settings), loop
                ).result()
            return self._models

    async def for_job(self, settings: Settings) -> Models:
        """What one job uses: the shared models, with a router of its own loop."""
        shared = await asyncio.to_thread(self.get, settings)
        return dataclasses.replace(shared, router=make_router(settings), embedded_llm=None)


async def _load_shared(settings: Settings) -> Models:
    try:
        models = await load_models(settings)
        if models.router is not None:  # bound to this loop; jobs make their own
            await models.router.r.aclose()
            models = dataclasses.replace(models, router=None)
        return models
    finally:
        await close_loop_sessions()


async def release_job(models: Models) -> None:
    """A job's end: close what belongs to its loop, leave the shared models running."""
    if models.router is not None:
        await models.router.r.aclose()
    await close_loop_sessions()


_host = ModelHost()
_calls = CallSlots(4)
_guardian: Guardian | None = None


def api_factory(settings: Settings) -> Callable[[], api.LiveKitAPI]:
    lk = settings.livekit

    def make() -> api.LiveKitAPI:
        secret = lk.api_secret.get_secret_value() if lk.api_secret else None
        return api.LiveKitAPI(settings.livekit.api_url, lk.api_key, secret)

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


async def _tapped(call: LiveKitCall) -> AsyncIterator[rtc.AudioFrame]:
    """The call's own input as the session hears it, without taking frames from the session."""
    q: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()
    call.audio_input.taps.append(q.put_nowait)
    try:
        while True:
            yield await q.get()
    finally:
        call.audio_input.taps.remove(q.put_nowait)


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
        pcm = frame_samples(frame)
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


async def handle_participant(
    models: Models,
    room: Any,
    participant: Any,
    *,
    make_api: Callable[[], api.LiveKitAPI],
    metadata: str = "",
    custom_io: bool = False,
    on_call: Callable[[LiveKitCall], None] | None = None,
    guardian: Guardian | None = None,
) -> CallResult | None:
    """Run one caller in a room, from the phone being answered to hanging up.

    The session starts at once, so the agent's audio track is published at once: LiveKit SIP
    answers an inbound call only when its participant has subscribed to an audio track. Only
    the greeting waits until the call is active (and, on an outbound call, until voicemail
    detection has decided). When the agent leaves for any reason but a warm transfer, the room
    is deleted, so a phone caller gets a BYE rather than silence.

    With ``custom_io`` the session's audio is the call's own input and output (tests drive
    them) instead of the room's tracks; everything else is as in production.
    """
    slot = _calls.take()
    if slot is None:  # LiveKit sent a job past the reported load: leave the room to others
        logger.warning("call in %s refused: %d calls in progress", room.name, _calls.in_use)
        return None
    try:
        return await _handle(
            models, room, participant, make_api, metadata, custom_io, on_call, guardian
        )
    finally:
        slot.release()


async def _handle(
    models: Models,
    room: Any,
    participant: Any,
    make_api: Callable[[], api.LiveKitAPI],
    metadata: str,
    custom_io: bool,
    on_call: Callable[[LiveKitCall], None] | None,
    guardian: Guardian | None,
) -> CallResult | None:
    history = _resumed(metadata)
    if history is not None:  # another worker died with this call: carry on where it was
        logger.info("resuming the call in %s after its worker was lost", room.name)
        agent_settings = models.settings.agent.model_copy(
            update={"greeting": models.settings.livekit.resume_greeting}
        )
        models = dataclasses.replace(
            models, settings=models.settings.model_copy(update={"agent": agent_settings})
        )
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
    outbound = sip and _outbound(metadata)
    voicemail: list[str] = []

    async def answered() -> bool:
        if sip and not await wait_until_active(room, participant, settings.livekit.greet_timeout):
            logger.info("phone call in %s never became active; not greeting", room.name)
            return False
        if outbound:
            frames = _tapped(call) if custom_io else _frames_from(participant)
            amd = await detect_machine(frames)
            logger.info("outbound call answered by: %s (%s)", amd.kind, amd.reason)
            if amd.kind == "machine":
                voicemail.append(settings.livekit.voicemail_message)
        return True

    def on_agent(agent: VoiceAgent) -> None:
        async def gate() -> bool:
            if history:
                await agent.update_chat_ctx(_with_history(agent.chat_ctx, history))
            if guardian is not None:
                _tell_turns(guardian, agent, room.name)
            ok = await answered()
            agent.voicemail = voicemail[0] if voicemail else None
            return ok

        agent.before_greeting = gate

    try:
        return await run_call(
            models, call, profile="telephony" if sip else "web",
            room=None if custom_io else room, participant_identity=participant.identity,
            on_agent=on_agent,
        )  # fmt: skip
    finally:
        room.off("sip_dtmf_received", on_dtmf)
        room.off("participant_disconnected", on_left)
        if call.end_reason != "warm_transferred":
            await _delete_room(call)


async def _delete_empty_room(settings: Settings, room: str) -> None:
    lk = api_factory(settings)()
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    except Exception as e:  # gone already, or the server is away: nothing more to do
        logger.info("could not delete room %s: %s", room, e)
    finally:
        await lk.aclose()


async def _delete_room(call: LiveKitCall) -> None:
    """End the room with the agent (idempotent: a room already gone is fine)."""
    try:
        await asyncio.wait_for(call.delete_room(), 10)
    except Exception as e:  # the call is over either way; say why the room may linger
        logger.warning("could not delete room %s: %s", call.room_name, e)


async def _watch_handed_over(settings: Settings, room: str, server: AgentServer) -> None:
    """After a warm transfer the agent has left the caller and the colleague talking in the
    room. When one of them hangs up, delete the room, so the other gets a BYE rather than
    silence. Polled through the API from outside the room; a drain ends the watch."""
    lk = api_factory(settings)()
    try:
        while not server.draining:
            await asyncio.sleep(2.0)
            res = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            people = [
                p for p in res.participants
                if p.kind != api.ParticipantInfo.Kind.AGENT
                and p.state == api.ParticipantInfo.State.ACTIVE
            ]  # fmt: skip
            if len(people) < 2:
                logger.info("a party left the handed-over call in %s; ending it", room)
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                return
    except api.TwirpError as e:
        if e.code != api.TwirpErrorCode.NOT_FOUND:  # not found: the room has gone already
            logger.warning("stopped watching the handed-over call in %s: %s", room, e)
    except Exception as e:  # the server is away: nothing more this job can do
        logger.warning("stopped watching the handed-over call in %s: %s", room, e)
    finally:
        await lk.aclose()


def _resumed(metadata: str) -> list[dict[str, str]] | None:
    """The turns so far of a call resumed after its worker died (``None``: a new call)."""
    with contextlib.suppress(wire.WireError, AttributeError):
        data = wire.load_json(metadata or "{}", "job metadata")
        if data.get("resume"):
            turns = data.get("history")
            return [
                {"role": str(t.get("role")), "text": str(t.get("text"))}
                for t in (turns if isinstance(turns, list) else [])
                if isinstance(t, dict) and t.get("role") in ("user", "assistant")
            ]
    return None


def _with_history(ctx: llm.ChatContext, turns: list[dict[str, str]]) -> llm.ChatContext:
    ctx = ctx.copy()
    for t in turns:
        ctx.add_message(role="user" if t["role"] == "user" else "assistant", content=t["text"])
    return ctx


def _tell_turns(guardian: Guardian, agent: VoiceAgent, room: str) -> None:
    """Each message of the conversation, to the guardian (what a resumed call starts from)."""

    def on_item(ev: Any) -> None:
        item = ev.item
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant"):
            if item.text_content:
                guardian.turn(room, item.role, item.text_content)

    agent.session.on("conversation_item_added", on_item)


def _outbound(metadata: str) -> bool:
    with contextlib.suppress(wire.WireError, AttributeError):
        return bool(wire.load_json(metadata or "{}", "job metadata").get("outbound"))
    return False


CLOSING_BUDGET_S = 30
"""Seconds past ``drain_timeout`` for the closing line and the hang-up."""


async def _close_when_drained(server: AgentServer, call: LiveKitCall, settings: Settings) -> None:
    """Once the worker drains (SIGTERM), give the call ``drain_timeout`` seconds, then have the
    agent say ``agent.closing`` and hang up (``run_call`` acts on ``call.closing``)."""
    while not server.draining:  # noqa: ASYNC110 (a flag of the main loop, in another thread)
        await asyncio.sleep(0.25)
    logger.info("draining: call %s may go on for %.0fs", call.call_id, settings.drain_timeout)
    await asyncio.sleep(settings.drain_timeout)
    call.closing.set()


async def _caller(ctx: JobContext, settings: Settings) -> rtc.RemoteParticipant | None:
    """The caller once they are in the room; None when nobody joins within ``greet_timeout``,
    or, for an outbound call, as soon as the dial has failed (`dial` removes the dispatch:
    the job may have been sent just before, and would otherwise wait out the timeout)."""
    lk = settings.livekit
    waiting = asyncio.ensure_future(ctx.wait_for_participant())
    deadline = time.monotonic() + lk.greet_timeout
    try:
        while time.monotonic() < deadline:
            done, _ = await asyncio.wait({waiting}, timeout=1.0)
            if done:
                return waiting.result()
            if _outbound(ctx.job.metadata) and not await _dispatch_stands(ctx, settings):
                logger.info("the dial for %s was called off; leaving", ctx.room.name)
                return None
        logger.info("nobody joined %s in %.0fs; leaving", ctx.room.name, lk.greet_timeout)
        return None
    finally:
        waiting.cancel()


async def _dispatch_stands(ctx: JobContext, settings: Settings) -> bool:
    lk = api_factory(settings)()
    try:
        found = await lk.agent_dispatch.list_dispatch(room_name=ctx.room.name)
        return any(d.id == ctx.job.dispatch_id for d in found)
    except api.TwirpError as e:
        if e.code == api.TwirpErrorCode.NOT_FOUND:  # the room went with the dispatch
            return False
        logger.debug("could not list the dispatches of %s: %s", ctx.room.name, e)
        return True
    except Exception as e:  # the server is away: keep waiting, the timeout still holds
        logger.debug("could not list the dispatches of %s: %s", ctx.room.name, e)
        return True
    finally:
        await lk.aclose()


def current_load() -> float:
    """What the worker reports to LiveKit: 1.0 means full (no more jobs are sent)."""
    return _calls.load


def build_server(settings: Settings) -> AgentServer:
    lk = settings.livekit
    # the framework's plugins register themselves on import, which only the main thread may do;
    # the models load on a thread of their own
    from livekit.plugins import silero  # noqa: F401

    global _calls
    _calls = CallSlots(settings.max_calls)
    metrics.count_calls_of(_calls)

    def prewarm(proc: JobProcess) -> None:
        proc.userdata["models"] = _host.get(settings)

    # the framework's drain waits for the jobs; ours end them itself after drain_timeout, with
    # the closing line, so the framework's own limit leaves room for that goodbye
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD, setup_fnc=prewarm, load_fnc=current_load,
        load_threshold=1.0, drain_timeout=int(settings.drain_timeout) + CLOSING_BUDGET_S,
        host=settings.http.host, port=lk.http_port, num_idle_processes=1,
    )  # fmt: skip

    async def entrypoint(ctx: JobContext) -> None:
        models = await _host.for_job(settings)
        try:
            await ctx.connect()
            participant = await _caller(ctx, settings)
            if participant is None:  # a dial that never connected: do not wait in an empty room
                await _delete_empty_room(settings, ctx.room.name)
                return
            watchers: list[asyncio.Task[None]] = []
            calls: list[LiveKitCall] = []

            def on_call(call: LiveKitCall) -> None:
                calls.append(call)
                watchers.append(asyncio.create_task(_close_when_drained(server, call, settings)))

            if _guardian is not None:
                _guardian.started(ctx.room.name, ctx.room.local_participant.identity)
            try:
                await handle_participant(
                    models, ctx.room, participant, make_api=api_factory(settings),
                    metadata=ctx.job.metadata, on_call=on_call, guardian=_guardian,
                )  # fmt: skip
            finally:
                if _guardian is not None:
                    _guardian.ended(ctx.room.name)
                for t in watchers:
                    t.cancel()
            if calls and calls[0].end_reason == "warm_transferred":
                await ctx.room.disconnect()
                await _watch_handed_over(settings, ctx.room.name, server)
        finally:
            await release_job(models)
            ctx.shutdown("call ended")

    server.rtc_session(entrypoint, agent_name=lk.agent_name)
    return server


def run(settings: Settings, *, dev: bool) -> None:
    lk = settings.livekit
    server = build_server(settings)
    # load before registering: LiveKit sends a job only to a worker that can take the call at
    # once (the framework's dev mode keeps no warmed process that would load them first)
    started = time.perf_counter()
    _host.get(settings)
    logger.info("models ready in %.1fs; registering with %s", time.perf_counter() - started, lk.url)
    if lk.metrics_port:
        metrics.serve(settings.http.host, lk.metrics_port)
        logger.info("metrics on http://%s:%d/metrics", settings.http.host, lk.metrics_port)
    secret: Any = lk.api_secret.get_secret_value() if lk.api_secret else None
    global _guardian
    _guardian = Guardian({
        "url": settings.livekit.api_url,
        "api_key": lk.api_key, "api_secret": secret, "agent_name": lk.agent_name,
        "resume": lk.resume_lost_calls, "resume_wait": lk.resume_wait,
    })  # fmt: skip
    logger.info("call guardian started (pid %d)", _guardian.pid)
    try:
        run_agent_server(
            server,
            proto.CliArgs(
                log_level=settings.log_level, url=lk.url, api_key=lk.api_key,
                api_secret=secret,
                # never the framework's dev mode: it skips the drain, and a developer's Ctrl+C
                # or SIGTERM should end calls as politely as production does
                dev=False, log_format="colored" if dev else "json",
            ),
        )  # fmt: skip
    finally:
        _guardian.close()
