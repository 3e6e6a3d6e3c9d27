"""One observer per call turns session and playout events into per-turn metrics.

It writes them into the call record (a ``timings`` object on each agent turn, ``barge_in``
records) and into the process's Prometheus metrics, served at ``/metrics``. Nothing else in
the worker times anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents.voice.events import UserStateChangedEvent
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from telephony.audio_io import PacedAudioOutput
from telephony.call import CallSlots

from .records import CallRecord
from .turns.speculation import SpeculationTracker

REGISTRY = CollectorRegistry()
_LAT_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0)
VOICE_TO_VOICE = Histogram(
    "voice_agent_voice_to_voice_seconds",
    "End of caller speech to first agent audio sent",
    buckets=_LAT_BUCKETS,
    registry=REGISTRY,
)
STAGE = Histogram(
    "voice_agent_stage_seconds",
    "Per-turn stage latencies (end of turn decision, STT final, LLM first token, TTS first audio)",
    ["stage"],
    buckets=_LAT_BUCKETS,
    registry=REGISTRY,
)
BARGE_IN_PAUSE = Histogram(
    "voice_agent_barge_in_pause_seconds",
    "Caller speech detected over the agent to playout paused",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
BARGE_INS = Counter("voice_agent_barge_ins", "Barge-ins by outcome", ["outcome"], registry=REGISTRY)
SPECULATION = Counter(
    "voice_agent_speculative_replies", "Speculative replies by outcome", ["outcome"],
    registry=REGISTRY,
)  # fmt: skip
WASTED_TOKENS = Counter(
    "voice_agent_speculative_wasted_tokens", "LLM chunks of cancelled speculative replies",
    registry=REGISTRY,
)  # fmt: skip
WASTED_AUDIO = Counter(
    "voice_agent_speculative_wasted_audio_seconds", "TTS audio of cancelled speculative replies",
    registry=REGISTRY,
)  # fmt: skip
CALLS = Counter("voice_agent_calls", "Calls started", ["transport"], registry=REGISTRY)
FALLBACKS = Counter(
    "voice_agent_fallbacks", "Model engines marked unavailable (their fallback took over)",
    ["kind", "engine"], registry=REGISTRY,
)  # fmt: skip
ROUTER_FALLBACKS = Counter(
    "voice_agent_router_fallbacks",
    "Router lookups that fell back: redis (Redis unreachable: the default node), no_node (no "
    "node serves the voice: the default node), repin (the session's node refused: pinned again)",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
ACTIVE_CALLS = Gauge("voice_agent_active_calls", "Calls in progress", registry=REGISTRY)
TURNS = Counter("voice_agent_turns", "Completed turns", ["role"], registry=REGISTRY)


USER_STAGES = (("end_of_turn", "end_of_turn_delay"), ("stt_final", "transcription_delay"))
AGENT_STAGES = (("llm_first_token", "llm_node_ttft"), ("tts_first_audio", "tts_node_ttfb"))


def count_router_fallback(reason: str) -> None:
    """Count one router fallback (the router itself knows nothing of Prometheus)."""
    ROUTER_FALLBACKS.labels(reason=reason).inc()


def count_calls_of(slots: CallSlots) -> None:
    """The active-calls gauge reads the worker's call registry (one count, not five)."""
    ACTIVE_CALLS.set_function(lambda: slots.in_use)


def serve(host: str, port: int) -> None:
    """Serve ``/metrics`` from a thread of its own (the LiveKit worker has no web server)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=REGISTRY)


def render() -> tuple[bytes, str]:
    """The Prometheus exposition of this process's metrics."""
    return generate_latest(REGISTRY), "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class BargeIn:
    detected_at: float
    paused_at: float
    outcome: str = "pending"  # "interrupt" | "resumed"
    words: str = ""

    @property
    def pause_ms(self) -> float:
        return round((self.paused_at - self.detected_at) * 1000, 1)


@dataclass
class CallObserver:
    """Watches one call's session and playout; see the module docstring."""

    record: CallRecord | None
    output: PacedAudioOutput | None = None
    speculation: SpeculationTracker | None = None
    _speech_started_at: float | None = None
    _speech_ended_at: float | None = None
    """When the VAD last declared the caller's speech over (its event, not the estimate of
    the last voiced sample the framework keeps as ``stopped_speaking_at``)."""
    _open: BargeIn | None = None
    _last_user: llm.ChatMessage | None = None
    _last_user_vad_end: float | None = None
    _spec_seen: dict[str, int] = field(default_factory=dict)

    def attach(self, session: AgentSession[Any], transport: str) -> None:
        CALLS.labels(transport).inc()
        session.on("user_state_changed", self._on_user_state)
        if self.output is not None:
            self.output.listeners.append(self._on_playout)

    def detach(self) -> None:
        if self.output is not None and self._on_playout in self.output.listeners:
            self.output.listeners.remove(self._on_playout)
        self._close_barge_in("resumed")

    def backchannel_heard(self, text: str) -> None:
        if self._open is not None:
            self._open.words = text

    # -- events ----------------------------------------------------------------------------

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self._speech_started_at = time.time()
        elif ev.new_state == "listening" and ev.old_state == "speaking":
            self._speech_ended_at = time.time()

    def _on_playout(self, what: str, at: float) -> None:
        if what == "pause":
            detected = self._speech_started_at or at
            self._open = BargeIn(detected_at=min(detected, at), paused_at=at)
            BARGE_IN_PAUSE.observe(at - self._open.detected_at)
        elif what == "resume":
            self._close_barge_in("resumed")
        elif what == "clear":
            self._close_barge_in("interrupt")

    def _close_barge_in(self, outcome: str) -> None:
        b, self._open = self._open, None
        if b is None:
            return
        b.outcome = outcome
        BARGE_INS.labels(outcome).inc()
        if self.record is not None:
            self.record.write(
                {"type": "barge_in", "at": b.detected_at, "pause_ms": b.pause_ms,
                 "outcome": outcome, "words": b.words}
            )  # fmt: skip

    def annotate(self, msg: llm.ChatMessage) -> dict[str, Any]:
        """Count a completed turn; for an agent turn, return its timings and speculation."""
        TURNS.labels("agent" if msg.role == "assistant" else msg.role).inc()
        if msg.role == "user":
            self._last_user = msg
            self._last_user_vad_end = self._speech_ended_at
            um: dict[str, Any] = dict(msg.metrics)
            for stage, key in USER_STAGES:
                if key in um:
                    STAGE.labels(stage).observe(um[key])
            return {}
        if msg.role != "assistant":
            return {}
        m: dict[str, Any] = dict(msg.metrics)
        if "e2e_latency" in m:
            VOICE_TO_VOICE.observe(m["e2e_latency"])
        for stage, key in AGENT_STAGES:
            if key in m:
                STAGE.labels(stage).observe(m[key])
        extra: dict[str, Any] = {
            "timings": turn_timings(self._last_user, msg, self._last_user_vad_end)
        }
        if self.speculation is not None:
            extra["speculative"] = self._speculation_delta()
        return extra

    def _speculation_delta(self) -> dict[str, int | float]:
        """What speculation did since the last agent turn, also counted in Prometheus."""
        if self.speculation is None:
            return {}
        now = self.speculation.settle().as_dict()
        delta = {k: round(v - self._spec_seen.get(k, 0), 3) for k, v in now.items()}
        self._spec_seen = now
        for outcome in ("used", "cancelled"):
            if delta.get(outcome):
                SPECULATION.labels(outcome).inc(delta[outcome])
        if delta.get("started"):
            SPECULATION.labels("started").inc(delta["started"])
        if delta.get("wasted_tokens"):
            WASTED_TOKENS.inc(delta["wasted_tokens"])
        if delta.get("wasted_audio_s"):
            WASTED_AUDIO.inc(delta["wasted_audio_s"])
        return delta


def turn_timings(
    user: llm.ChatMessage | None, agent: llm.ChatMessage, vad_end_at: float | None = None
) -> dict[str, float | None]:
    """The per-turn timing fields of an agent turn, in ms, from the framework's turn metrics.

    ``vad_end_ms`` is how long after the caller's last voiced sample (the framework's estimate,
    ``caller_speech_end``) the VAD declared the speech over: the VAD's own lag, which the other
    stages, all measured from that estimate, include."""
    um = user.metrics if user is not None else {}
    am = agent.metrics

    def ms(v: Any) -> float | None:
        return round(float(v) * 1000, 1) if v is not None else None

    end = um.get("stopped_speaking_at")
    vad_end = None
    if vad_end_at is not None and end is not None and vad_end_at >= end:
        vad_end = ms(vad_end_at - end)
    return {
        "caller_speech_end": end,
        "vad_end_ms": vad_end,
        "end_of_turn_ms": ms(um.get("end_of_turn_delay")),
        "stt_final_ms": ms(um.get("transcription_delay")),
        "llm_first_token_ms": ms(am.get("llm_node_ttft")),
        "tts_first_audio_ms": ms(am.get("tts_node_ttfb")),
        "first_audio_out": am.get("started_speaking_at"),
        "voice_to_voice_ms": ms(am.get("e2e_latency")),
    }
