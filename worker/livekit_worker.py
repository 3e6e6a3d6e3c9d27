"""The worker registered with a LiveKit server (used when ``LIVEKIT_URL`` is set).

Jobs run as threads of this process so that every call shares the one set of models loaded
here; each job gets its own session, LLM client and call record.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType
from livekit.agents.cli import proto
from livekit.agents.cli.cli import _run_worker

from . import records
from .agent import VoiceAgent
from .metrics import CallObserver
from .models import Models, load_llm, load_models
from .session import create_session
from .settings import Settings
from .turns import BackchannelPolicy, SpeculationTracker

logger = logging.getLogger("worker.livekit")

_models_lock = threading.Lock()
_shared: Models | None = None


def _shared_models(settings: Settings) -> Models:
    """Load the heavy models once per process, from whichever job thread asks first."""
    global _shared
    with _models_lock:
        if _shared is None:
            _shared = asyncio.run(load_models(settings, ("vad", "turn", "stt", "tts")))
        return _shared


def build_server(settings: Settings) -> AgentServer:
    server = AgentServer(job_executor_type=JobExecutorType.THREAD)

    async def entrypoint(ctx: JobContext) -> None:
        shared = await asyncio.to_thread(_shared_models, settings)
        llm, embedded = await load_llm(settings)
        models = Models(
            settings=settings, vad=shared.vad, turn_detector=shared.turn_detector,
            stt=shared.stt, tts=shared.tts, llm=llm, embedded_llm=embedded,
        )  # fmt: skip
        await ctx.connect()
        participant = await ctx.wait_for_participant()
        is_sip = participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
        record = records.CallRecord(settings.calls_dir, records.new_call_id())
        record.start(
            "livekit-sip" if is_sip else "livekit-web",
            room=ctx.room.name,
            caller=participant.attributes.get("sip.phoneNumber", participant.identity),
        )
        session = create_session(models, "telephony" if is_sip else "web")
        ours = settings.turn.profile == "default"
        speculation = SpeculationTracker(cancel_on_speech_start=ours)
        observer = CallObserver(record=record, speculation=speculation)
        observer.attach(session, "livekit-sip" if is_sip else "livekit-web")
        records.attach(record, session, annotate=observer.annotate)
        agent = VoiceAgent(
            settings.agent,
            backchannels=BackchannelPolicy(settings.turn.backchannels) if ours else None,
            speculation=speculation,
        )

        async def finish() -> None:
            observer.detach()
            record.end("room_closed")
            await models.aclose()

        ctx.add_shutdown_callback(finish)
        await session.start(agent, room=ctx.room)
        speculation.attach(session)

    server.rtc_session(entrypoint, agent_name=settings.livekit.agent_name)
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
