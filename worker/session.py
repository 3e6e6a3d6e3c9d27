"""The session factory: one ``AgentSession`` per call, on the process's shared models.

Two axes. The *transport* profile adapts to where audio comes from: ``web`` (a browser with
its own echo cancellation) keeps a short echo warm-up, ``telephony`` none, since a phone
caller's audio never contains the agent's. The *turn* profile is ``default`` (ours: speculation
with preemptive TTS, barge-in that pauses within a VAD frame and lets words decide) or
``livekit-defaults`` (the framework's stock turn handling, kept for comparison in the harness
and benchmark). Both stay local: the end-of-turn model is ``v1-mini`` and interruption mode is
``vad``, never a cloud model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from livekit.agents import AgentSession, APIConnectOptions
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.turn import TurnHandlingOptions

from .models import Models
from .spoken import without_markup
from .turns.detector import TextVetoTurnDetector

if TYPE_CHECKING:
    from infra.router import SessionRoute

Profile = Literal["web", "telephony"]
TurnProfile = Literal["default", "livekit-defaults"]

ECHO_WARMUP_S: dict[Profile, float | None] = {"web": 1.0, "telephony": None}
STOCK_ECHO_WARMUP_S = 3.0


def text_veto_detector(models: Models, turn_profile: TurnProfile) -> TextVetoTurnDetector | None:
    """A per-call end-of-turn detector the transcript can hold back (``turn.text_veto``), for
    our turn profile when the end-of-turn model is loaded; None otherwise."""
    t = models.settings.turn
    if turn_profile != "default" or models.turn_detector is None or not t.text_veto:
        return None
    return TextVetoTurnDetector(version="v1-mini")  # the weights are the process's one copy


def turn_handling(
    models: Models, turn_profile: TurnProfile, detector: Any = None
) -> TurnHandlingOptions:
    """Turn handling for a profile; see the module docstring. ``detector`` replaces the shared
    end-of-turn model (see :func:`text_veto_detector`)."""
    t = models.settings.turn
    if detector is None:
        detector = models.turn_detector if models.turn_detector is not None else "vad"
    if turn_profile == "livekit-defaults":
        # the framework's defaults, except that both detectors are pinned to the local ones
        return TurnHandlingOptions(turn_detection=detector, interruption={"mode": "vad"})
    return TurnHandlingOptions(
        turn_detection=detector,
        endpointing={
            "mode": t.endpointing_mode,
            "min_delay": t.min_endpointing_delay,
            "max_delay": t.max_endpointing_delay,
        },
        interruption={
            "mode": "vad",
            # pause on the first VAD frames of caller speech; words then decide (agent.stt_node)
            "min_duration": t.pause_after,
            "resume_false_interruption": True,
            "false_interruption_timeout": t.resume_after,
            "backchannel_boundary": None,
        },
        preemptive_generation={
            "enabled": t.speculate,
            "preemptive_tts": t.speculate,
            "max_retries": 5,
        },
    )


def session_route(models: Models, session_id: str) -> SessionRoute:
    """The router's resolver for one session, with the settings' bounds and default node."""
    from infra.router import SessionRoute

    from .metrics import count_router_fallback

    assert models.router is not None
    r = models.settings.router
    return SessionRoute(
        models.router, session_id, default_url=r.default_url, timeout=r.lookup_timeout,
        load_timeout=r.load_timeout, on_fallback=count_router_fallback,
    )  # fmt: skip


def routed_llm(models: Models, route: SessionRoute) -> Any:
    """The shared LLM's options, with each request sent where ``route`` says."""
    from dataclasses import replace

    from plugins.vllm import LLM as RoutedLLM

    assert models.llm is not None
    return RoutedLLM(opts=replace(models.llm.options, resolver=route))


def create_session(
    models: Models,
    profile: Profile = "web",
    turn_profile: TurnProfile | None = None,
    session_id: str | None = None,
    turn_detector: Any = None,
) -> AgentSession[Any]:
    """A new session wired to the shared models. With a router configured, the session's
    LLM requests go to the GPU node the router pins ``session_id`` to; ``turn_detector``
    overrides the shared end-of-turn model for this session."""
    s = models.settings
    if models.stt is None or models.llm is None or models.tts is None or models.vad is None:
        raise ValueError("a session needs the VAD, STT, LLM and TTS loaded")
    turn_profile = turn_profile or s.turn.profile
    llm_conn = APIConnectOptions(
        max_retry=s.llm.max_retries, retry_interval=0.3, timeout=s.llm.connect_timeout
    )
    warmup = STOCK_ECHO_WARMUP_S if turn_profile == "livekit-defaults" else ECHO_WARMUP_S[profile]
    llm: Any = models.llm
    tts: Any = models.session_tts or models.tts
    if models.router is not None and session_id is not None:
        from dataclasses import replace

        resolve = session_route(models, session_id)
        llm = routed_llm(models, resolve)
        from plugins.orpheus import TTS as OrpheusTTS

        if isinstance(tts, OrpheusTTS):  # the voice's LoRA lives on the session's node
            tts = OrpheusTTS(opts=replace(tts.opts, resolver=resolve), decoder=tts.decoder)
    return AgentSession(
        stt=models.session_stt or models.stt,
        vad=models.stock_vad() if turn_profile == "livekit-defaults" else models.vad,
        llm=llm,
        tts=tts,
        turn_handling=turn_handling(models, turn_profile, turn_detector),
        aec_warmup_duration=warmup,
        # ours: markup dropped with nothing held back (the stock filter delays every token)
        tts_text_transforms=(
            ["filter_markdown", "filter_emoji"]
            if turn_profile == "livekit-defaults"
            else [without_markup, "filter_emoji"]
        ),
        user_away_timeout=None,
        conn_options=SessionConnectOptions(
            llm_conn_options=llm_conn,
            # speech engines: a short budget, then the fallback engine takes over
            stt_conn_options=APIConnectOptions(max_retry=1, retry_interval=0.3, timeout=5.0),
            tts_conn_options=APIConnectOptions(max_retry=1, retry_interval=0.3, timeout=5.0),
            # the agent apologises and carries on; a dead LLM must not end the call
            max_unrecoverable_errors=1000,
        ),
    )
