"""The call harness: a scripted caller talks to a real ``AgentSession`` in real time.

``python -m worker harness SCENARIO.yaml [--profile NAME ...] [--json OUT.json]`` plays the
scenario's caller lines (espeak-ng), pauses, WAV files and noise bursts through the loopback
transport at real-time pace, with the real models, records what the agent said, and measures
from the caller's side: voice-to-voice latency (end of the caller's audio to the first agent
audio out), barge-in pause latency (onset of the caller's audio to playout pausing), whether
playout resumed after backchannels and noise, and cut-offs (the agent starting to speak while
the caller is in a mid-turn pause).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from plugins.audio import AudioFileError, read_wav, resample
from telephony.loopback import LoopbackCall

from . import records
from .call import run_call
from .models import Models
from .session import TurnProfile
from .turns import BackchannelPolicy

RATE = 16000
WAIT_LIMIT_S = 30.0
EVENTS = ("agent_speech_start", "agent_speech_end")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message says where and why."""


@dataclass
class Step:
    kind: Literal["say", "pause", "play", "noise", "wait_for"]
    value: Any
    after: float | None = None


@dataclass
class Scenario:
    name: str
    voice: str
    steps: list[Step]
    base_dir: Path


def load_scenario(path: Path) -> Scenario:
    """Parse and check a scenario file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ScenarioError(f"no such scenario: {path}") from e
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ScenarioError(f"{path}: expected a mapping with a 'steps' list")
    steps: list[Step] = []
    for i, raw in enumerate(data["steps"], start=1):
        if not isinstance(raw, dict):
            raise ScenarioError(f"{path}: step {i} is not a mapping")
        after = raw.get("after")
        if after is not None and (not isinstance(after, int | float) or after < 0):
            raise ScenarioError(f"{path}: step {i}: 'after' must be a number of seconds")
        kinds = [k for k in ("say", "pause", "play", "noise", "wait_for") if k in raw]
        if len(kinds) != 1:
            raise ScenarioError(
                f"{path}: step {i} needs exactly one of say, pause, play, noise, wait_for"
            )
        kind: Any = kinds[0]
        value = raw[kind]
        if kind == "say" and (not isinstance(value, str) or not value.strip()):
            raise ScenarioError(f"{path}: step {i}: 'say' needs text")
        if kind in ("pause", "noise") and (not isinstance(value, int | float) or value <= 0):
            raise ScenarioError(f"{path}: step {i}: '{kind}' needs a positive number of seconds")
        if kind == "wait_for" and value not in EVENTS:
            raise ScenarioError(f"{path}: step {i}: wait_for must be one of {', '.join(EVENTS)}")
        if kind == "play" and not isinstance(value, str):
            raise ScenarioError(f"{path}: step {i}: 'play' needs a WAV path")
        steps.append(
            Step(kind=kind, value=value, after=float(after) if after is not None else None)
        )
    return Scenario(
        name=str(data.get("name") or path.stem),
        voice=str(data.get("voice") or "en-us"),
        steps=steps,
        base_dir=path.parent,
    )


class CallerVoice:
    """Caller lines spoken by espeak-ng, cached per text."""

    def __init__(self, voice: str) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise ScenarioError("the harness speaks caller lines with espeak-ng; install it")
        self._exe = exe
        self._voice = voice
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        if text not in self._cache:
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "line.wav"
                subprocess.run(
                    [self._exe, "-v", self._voice, "-w", str(wav), text],
                    check=True, capture_output=True,
                )  # fmt: skip
                samples, rate = read_wav(wav)
            self._cache[text] = resample(samples, rate, RATE)
        return self._cache[text]


@dataclass
class _Utterance:
    kind: str  # say | play | noise
    text: str
    onset: float
    end: float = 0.0
    during_agent: bool = False


@dataclass
class _Timeline:
    agent_starts: list[float] = field(default_factory=list)
    agent_ends: list[float] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)
    resumes: list[float] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    utterances: list[_Utterance] = field(default_factory=list)
    mid_turn_pauses: list[tuple[float, float]] = field(default_factory=list)
    speaking: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_playout(self, what: str, at: float) -> None:
        if what == "start":
            self.agent_starts.append(at)
            self.speaking = True
        elif what in ("done", "clear"):
            self.agent_ends.append(at)
            self.speaking = False
            if what == "clear":
                self.clears.append(at)
        elif what == "pause":
            self.pauses.append(at)
        elif what == "resume":
            self.resumes.append(at)
        self.changed.set()


async def _run_steps(call: LoopbackCall, scenario: Scenario, tl: _Timeline) -> None:
    voice = CallerVoice(scenario.voice)
    last_mark = time.time()
    prev_kind = ""

    async def hold(seconds: float) -> None:
        await call.silence(seconds)

    async def wait_event(name: str) -> float:
        """Keep streaming silence until the agent starts (a new reply) or stops speaking."""
        starts_before = len(tl.agent_starts)
        last_caller = tl.utterances[-1].end if tl.utterances else 0.0
        deadline = time.monotonic() + WAIT_LIMIT_S
        while time.monotonic() < deadline:
            if name == "agent_speech_end" and not tl.speaking:
                return tl.agent_ends[-1] if tl.agent_ends else time.time()
            if name == "agent_speech_start" and (
                len(tl.agent_starts) > starts_before
                or (tl.speaking and tl.agent_starts and tl.agent_starts[-1] >= last_caller)
            ):
                return tl.agent_starts[-1]
            await call.silence(0.02)
        raise ScenarioError(f"{scenario.name}: gave up waiting {WAIT_LIMIT_S:.0f}s for {name}")

    pending_pause: float | None = None
    for step in scenario.steps:
        if step.after is not None:
            wait = last_mark + step.after - time.time()
            if wait > 0:
                await hold(wait)
        if step.kind == "wait_for":
            last_mark = await wait_event(str(step.value))
        elif step.kind == "pause":
            start = time.time()
            await hold(float(step.value))
            last_mark = time.time()
            if prev_kind == "say":
                pending_pause = start
        else:
            if step.kind == "say":
                samples, text = voice(str(step.value)), str(step.value)
            elif step.kind == "noise":
                n = int(float(step.value) * RATE)
                rng = np.random.default_rng(len(tl.utterances))
                samples = np.clip(rng.normal(0, 0.25, n) * 32767, -32768, 32767).astype(np.int16)
                text = ""
            else:
                path = Path(str(step.value))
                path = path if path.is_absolute() else scenario.base_dir / path
                try:
                    wav, rate = read_wav(path)
                except (FileNotFoundError, AudioFileError) as e:
                    raise ScenarioError(f"{scenario.name}: cannot play {path}: {e}") from e
                samples, text = resample(wav, rate, RATE), path.name
            if pending_pause is not None and step.kind == "say" and prev_kind == "pause":
                tl.mid_turn_pauses.append((pending_pause, time.time()))
            pending_pause = None
            utt = _Utterance(kind=step.kind, text=text, onset=time.time(), during_agent=tl.speaking)
            tl.utterances.append(utt)
            await call.play(samples, RATE)
            utt.end = last_mark = time.time()
        prev_kind = step.kind
    if tl.speaking:
        await wait_event("agent_speech_end")
    await hold(2.5)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.array(values), q)), 1)


def _analyse(
    scenario: Scenario,
    profile: str,
    tl: _Timeline,
    rec: list[dict[str, Any]],
    policy: BackchannelPolicy,
) -> dict[str, Any]:
    speech = [u for u in tl.utterances if u.kind != "noise"]
    # agent replies: each audio start after the caller's speech, not a resume of a paused reply
    turns: list[dict[str, Any]] = []
    agent_turns = [r for r in rec if r.get("type") == "turn" and r.get("role") == "agent"][1:]
    user_turns = [r for r in rec if r.get("type") == "turn" and r.get("role") == "user"]
    for start in tl.agent_starts[1:]:
        before = [u for u in speech if u.end <= start]
        if not before:
            continue
        last = before[-1]
        # a reply answers speech that ended after the previous agent audio began
        prev_starts = [s for s in tl.agent_starts if s < start]
        if prev_starts and last.end < prev_starts[-1]:
            continue
        turns.append({"v2v": (start - last.end) * 1000, "start": start})
    out_turns = []
    for i, t in enumerate(turns):
        agent = agent_turns[i] if i < len(agent_turns) else {}
        user = user_turns[i] if i < len(user_turns) else {}
        spec = agent.get("speculative") or {}
        out_turns.append(
            {
                "user_text": user.get("text", ""),
                "agent_text": agent.get("text", ""),
                "voice_to_voice_ms": round(t["v2v"], 1),
                "speculative": {k: spec.get(k, 0) for k in ("started", "used", "cancelled")},
                "wasted_tokens": spec.get("wasted_tokens", 0),
                "timings": agent.get("timings") or {},
            }
        )
    interruptions: list[dict[str, Any]] = []
    for u in tl.utterances:
        if not u.during_agent:
            continue
        kind = "noise" if u.kind == "noise" else (
            "backchannel" if policy.is_backchannel(u.text) else "interrupt"
        )  # fmt: skip
        window_end = u.end + 3.0  # a pause this long after the sound ends is not its doing
        pause = next((p for p in tl.pauses if u.onset - 0.05 <= p <= window_end), None)
        next_clear = next((c for c in tl.clears if u.onset <= c <= window_end + 3.0), None)
        if pause is not None and next_clear is not None and next_clear < pause:
            pause = None
        # playout went on: it resumed after pausing, or was never paused nor cut
        resumed = next_clear is None and (pause is None or any(r > pause for r in tl.resumes))
        interruptions.append(
            {
                "at_s": round(u.onset - tl.utterances[0].onset, 2) if tl.utterances else 0.0,
                "kind": kind,
                "text": u.text,
                "pause_ms": round((pause - u.onset) * 1000, 1) if pause is not None else None,
                "resumed": resumed,
                "cut": next_clear is not None and (pause is None or next_clear - pause < 10),
            }
        )
    # the agent starting to talk in a mid-turn pause, or over a caller who was talking to it
    talking = [(u.onset, u.end) for u in speech if not u.during_agent]
    cut_offs = sum(
        1
        for s in tl.agent_starts
        if any(a <= s <= b + 0.05 for a, b in tl.mid_turn_pauses)
        or any(a + 0.05 <= s <= b for a, b in talking)
    )
    v2v = [t["voice_to_voice_ms"] for t in out_turns]
    pauses = [float(i["pause_ms"]) for i in interruptions if i["pause_ms"] is not None]
    wasted = sum(t["wasted_tokens"] for t in out_turns)
    return {
        "scenario": scenario.name,
        "profile": profile,
        "turns": out_turns,
        "interruptions": interruptions,
        "summary": {
            "voice_to_voice_p50_ms": _percentile(v2v, 50),
            "voice_to_voice_p95_ms": _percentile(v2v, 95),
            "barge_in_pause_p50_ms": _percentile(pauses, 50),
            "false_interruptions_resumed": sum(
                1 for i in interruptions if i["kind"] != "interrupt" and i["resumed"]
            ),
            "false_interruptions": sum(1 for i in interruptions if i["kind"] != "interrupt"),
            "cut_offs": cut_offs,
            "wasted_speculative_tokens": wasted,
        },
    }


async def run_scenario(
    models: Models, scenario: Scenario, profile: TurnProfile = "default"
) -> dict[str, Any]:
    """Run one scenario under one turn profile and measure it."""
    call = LoopbackCall(records.new_call_id(), input_rate=RATE)
    tl = _Timeline()
    call.audio_output.listeners.append(tl.on_playout)
    call.start_listening()

    async def caller() -> None:
        try:
            await call.silence(0.3)
            await _run_steps(call, scenario, tl)
        finally:
            call.mark_ended("caller_hangup")

    script = asyncio.create_task(caller())
    answered = time.time()  # the playout listeners' clock
    result = await run_call(models, call, profile="telephony", turn_profile=profile)
    await script  # re-raises a scenario error
    await call.close()
    rec = records.read_records(result.record.path)
    out = _analyse(scenario, profile, tl, rec, BackchannelPolicy(models.settings.turn.backchannels))
    out["call_id"] = call.call_id
    # from the call being taken to the greeting's first sample going out
    out["time_to_greeting_ms"] = (
        round((tl.agent_starts[0] - answered) * 1000, 1) if tl.agent_starts else None
    )
    out["speculation"] = result.speculation.settle().as_dict()
    out["turns_held_by_words"] = result.turn_veto.held if result.turn_veto is not None else None
    out["cut_after_pause_ms"] = [
        round((c - p) * 1000, 1) for p, c in zip(tl.pauses, tl.clears, strict=False) if c >= p
    ]
    out["chat"] = [
        {"role": m.role, "text": m.text_content or "", "interrupted": m.interrupted}
        for m in result.chat
    ]
    out["heard"] = call.heard()
    return out


def format_table(result: dict[str, Any]) -> str:
    """A per-turn table and the summary, for people."""
    lines = [f"{result['scenario']} [{result['profile']}]"]
    lines.append(f"  {'#':>2}  {'v2v ms':>7}  {'spec s/u/c':>10}  caller -> agent")
    for i, t in enumerate(result["turns"], start=1):
        s = t["speculative"]
        lines.append(
            f"  {i:>2}  {t['voice_to_voice_ms']:>7.0f}  "
            f"{s['started']:>4}/{s['used']}/{s['cancelled']}  "
            f"{t['user_text'][:40]!r} -> {t['agent_text'][:40]!r}"
        )
    for it in result["interruptions"]:
        pause = f"{it['pause_ms']:.0f} ms" if it["pause_ms"] is not None else "no pause"
        lines.append(
            f"  barge-in at {it['at_s']:.1f}s: {it['kind']} {it['text'][:30]!r}: paused after "
            f"{pause}, {'resumed' if it['resumed'] else 'not resumed'}"
        )
    sm = result["summary"]
    lines.append(
        f"  summary: v2v P50 {sm['voice_to_voice_p50_ms']} ms, "
        f"P95 {sm['voice_to_voice_p95_ms']} ms;"
        f" barge-in pause P50 {sm['barge_in_pause_p50_ms']} ms; false interruptions resumed "
        f"{sm['false_interruptions_resumed']}/{sm['false_interruptions']}; cut-offs "
        f"{sm['cut_offs']}; wasted speculative tokens {sm['wasted_speculative_tokens']}"
    )
    return "\n".join(lines)
