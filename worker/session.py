"""The session factory: one ``AgentSession`` per call, on the process's shared models.

Profiles adapt turn handling to the transport: ``web`` (a browser with its own echo
cancellation) keeps a short echo warm-up, ``telephony`` none, since a phone caller's audio
never contains the agent's.
"""

from __future__ import annotations

from typing import Any, Literal

from livekit.agents import AgentSession, APIConnectOptions
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.turn import TurnHandlingOptions

from .models import Models

Profile = Literal["web", "telephony"]

ECHO_WARMUP_S: dict[Profile, float | None] = {"web": 1.0, "telephony": None}


def create_session(models: Models, profile: Profile = "web") -> AgentSession[Any]:
    """A new session wired to the shared models, with our turn-handling defaults."""
    s = models.settings
    if models.stt is None or models.llm is None or models.tts is None or models.vad is None:
        raise ValueError("a session needs the VAD, STT, LLM and TTS loaded")
    turn = s.turn
    llm_conn = APIConnectOptions(
        max_retry=s.llm.max_retries, retry_interval=0.3, timeout=s.llm.connect_timeout
    )
    return AgentSession(
        stt=models.stt,
        vad=models.vad,
        llm=models.llm,
        tts=models.tts,
        turn_handling=TurnHandlingOptions(
            turn_detection=models.turn_detector if models.turn_detector is not None else "vad",
            endpointing={
                "mode": "fixed",
                "min_delay": turn.min_endpointing_delay,
                "max_delay": turn.max_endpointing_delay,
            },
            interruption={
                "mode": "vad",  # local; never a cloud interruption model
                "min_duration": turn.min_interruption_duration,
                "resume_false_interruption": True,
                "false_interruption_timeout": 1.5,
            },
            preemptive_generation={"enabled": True, "preemptive_tts": True},
        ),
        aec_warmup_duration=ECHO_WARMUP_S[profile],
        user_away_timeout=None,
        conn_options=SessionConnectOptions(
            llm_conn_options=llm_conn,
            # the agent apologises and carries on; a dead LLM must not end the call
            max_unrecoverable_errors=1000,
        ),
    )
