"""``python -m worker eval FILE.yaml``: scripted text conversations against the configured LLM.

Each conversation runs through the real agent (its instructions, facts and tools) in a
text-only ``AgentSession``, driven with the framework's own test API (``session.run``), so a
tool the model calls is executed exactly as in a call: the booking rules answer, and call
control (``end_call``, transfers) acts on a stand-in call that records what was asked of it.
Every reply is checked against its expectations: regular expressions that must or must not
match, tools that must (with arguments) or must not be called. The score is the share of
checks met.

File format::

    name: restaurant
    facts: restaurant.facts.yaml     # relative to this file; or an inline table
    conversations:
      - name: saturday-hours
        turns:
          - user: "What time do you open on Saturday?"
            expect:
              match: ["(?i)noon|12"]          # each must match the reply
              not_match: ["(?i)sunday"]        # none may match
              tools: [{name: make_booking, args: {party_size: 10}}]
              no_tools: [end_call]
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from livekit.agents import AgentSession, llm
from livekit.agents.voice.run_result import (
    ChatMessageEvent,
    FunctionCallEvent,
    RunResult,
)
from pydantic import BaseModel, Field, ValidationError

from telephony.call import Call

from .agent import VoiceAgent
from .facts import BusinessFacts, load_facts
from .models import Models
from .settings import Settings

TRANSFER_TARGET = "sip:front-desk@example.invalid"


class ToolExpectation(BaseModel):
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    """Each given argument must equal the call's (strings compared case-insensitively)."""


class Expectation(BaseModel):
    match: list[str] = Field(default_factory=list)
    not_match: list[str] = Field(default_factory=list)
    tools: list[ToolExpectation] = Field(default_factory=list)
    no_tools: list[str] = Field(default_factory=list)


class EvalTurn(BaseModel):
    user: str
    expect: Expectation = Field(default_factory=Expectation)


class Conversation(BaseModel):
    name: str
    turns: list[EvalTurn]


class EvalFile(BaseModel):
    name: str
    facts: BusinessFacts | str | None = None
    instructions: str | None = None
    conversations: list[Conversation]


class EvalError(ValueError):
    """An eval file that cannot be used."""


def load_eval(path: Path) -> tuple[EvalFile, BusinessFacts | None]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = EvalFile.model_validate(data)
    except FileNotFoundError as e:
        raise EvalError(f"eval file not found: {path}") from e
    except (yaml.YAMLError, ValidationError, UnicodeDecodeError) as e:
        raise EvalError(f"eval file {path}: {e}") from e
    facts = spec.facts
    if isinstance(facts, str):
        facts = load_facts(path.parent / facts)
    return spec, facts


@dataclass
class Check:
    what: str
    ok: bool


@dataclass
class TurnResult:
    conversation: str
    user: str
    reply: str
    tools: list[tuple[str, dict[str, Any]]]
    checks: list[Check]
    seconds: float
    first_token_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation,
            "user": self.user,
            "reply": self.reply,
            "tools": [{"name": n, "args": a} for n, a in self.tools],
            "checks": [{"what": c.what, "ok": c.ok} for c in self.checks],
            "seconds": round(self.seconds, 3),
            "first_token_s": None if self.first_token_s is None else round(self.first_token_s, 3),
        }


@dataclass
class EvalReport:
    name: str
    model: str
    turns: list[TurnResult] = field(default_factory=list)

    @property
    def met(self) -> int:
        return sum(c.ok for t in self.turns for c in t.checks)

    @property
    def total(self) -> int:
        return sum(len(t.checks) for t in self.turns)

    @property
    def score(self) -> float:
        return self.met / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        ttft = [t.first_token_s for t in self.turns if t.first_token_s is not None]
        return {
            "name": self.name,
            "model": self.model,
            "met": self.met,
            "total": self.total,
            "score": round(self.score, 4),
            "first_token_s_median": round(statistics.median(ttft), 3) if ttft else None,
            "turn_s_median": round(statistics.median(t.seconds for t in self.turns), 3)
            if self.turns
            else None,
            "turns": [t.as_dict() for t in self.turns],
        }


class EvalCall(Call):
    """A stand-in call: call control is recorded, not carried out."""

    transport = "eval"

    def __init__(self, call_id: str) -> None:
        super().__init__(call_id, output_rate=24000, caller="eval")
        self.actions: list[tuple[str, str]] = []

    async def hangup(self, reason: str = "agent_hangup") -> None:
        self.actions.append(("hangup", reason))
        self.mark_ended(reason)

    async def transfer(self, target: str) -> None:
        self.actions.append(("transfer", target))


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, str) and isinstance(got, str):
        return expected.strip().lower() == got.strip().lower()
    if isinstance(expected, int | float) and isinstance(got, str):
        return got.strip() == str(expected)
    return bool(expected == got)


def check_reply(
    expect: Expectation, reply: str, tools: list[tuple[str, dict[str, Any]]]
) -> list[Check]:
    """Each expectation as one check that is met or not."""
    checks = [Check(f"matches /{p}/", re.search(p, reply) is not None) for p in expect.match]
    checks += [
        Check(f"does not match /{p}/", re.search(p, reply) is None) for p in expect.not_match
    ]
    for want in expect.tools:
        calls = [args for name, args in tools if name == want.name]
        ok = any(all(_same(v, args.get(k)) for k, v in want.args.items()) for args in calls)
        shown = ", ".join(f"{k}={v}" for k, v in want.args.items())
        checks.append(Check(f"calls {want.name}({shown})", ok))
    names = {name for name, _ in tools}
    checks += [Check(f"does not call {n}", n not in names) for n in expect.no_tools]
    return checks


class _FirstToken:
    """Times the first streamed content of each LLM request."""

    def __init__(self, model: llm.LLM) -> None:
        self.first: float | None = None
        model.on("metrics_collected", self._on_metrics)

    def _on_metrics(self, ev: Any) -> None:
        ttft = getattr(ev, "ttft", None)
        if self.first is None and isinstance(ttft, float) and ttft >= 0:
            self.first = ttft


def _said_anything(session: AgentSession[Any]) -> bool:
    return any(
        isinstance(m, llm.ChatMessage) and m.role == "assistant" for m in session.history.items
    )


async def run_conversation(
    models: Models, settings: Settings, conv: Conversation, report: EvalReport
) -> None:
    assert models.llm is not None
    call = EvalCall(f"eval-{conv.name}")
    agent = VoiceAgent(settings.agent, call=call, transfer_target=TRANSFER_TARGET)
    session: AgentSession[Any] = AgentSession(llm=models.llm)
    timer = _FirstToken(models.llm)
    await session.start(agent)
    # the greeting, into the history as in a call: the agent's on_enter may only get to it
    # after start() returns (on a busy machine it did), and a first turn sent meanwhile raced
    # the greeting and came back empty
    deadline = time.monotonic() + 30
    while settings.agent.greeting and session.current_speech is None:
        if _said_anything(session) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    if session.current_speech is not None:
        await session.current_speech.wait_for_playout()
    try:
        for turn in conv.turns:
            if call.ended.is_set():
                report.turns.append(
                    TurnResult(conv.name, turn.user, "(call already ended)", [],
                               [Check("the call is still up", False)], 0.0, None)
                )  # fmt: skip
                continue
            timer.first = None
            t0 = time.perf_counter()
            result: RunResult[None] = await session.run(user_input=turn.user)
            seconds = time.perf_counter() - t0
            reply_parts: list[str] = []
            tools: list[tuple[str, dict[str, Any]]] = []
            for ev in result.events:
                if isinstance(ev, ChatMessageEvent) and ev.item.role == "assistant":
                    reply_parts.append(ev.item.text_content or "")
                elif isinstance(ev, FunctionCallEvent):
                    try:
                        args = json.loads(ev.item.arguments or "{}")
                    except ValueError:
                        args = {}
                    tools.append((ev.item.name, args if isinstance(args, dict) else {}))
            reply = " ".join(p.strip() for p in reply_parts if p.strip())
            report.turns.append(
                TurnResult(
                    conv.name, turn.user, reply, tools, check_reply(turn.expect, reply, tools),
                    seconds, timer.first,
                )
            )  # fmt: skip
    finally:
        models.llm.off("metrics_collected", timer._on_metrics)
        await session.aclose()


async def run_eval(models: Models, path: Path) -> EvalReport:
    """Run every conversation of one eval file with its facts in place."""
    spec, facts = load_eval(path)
    settings = models.settings.model_copy(deep=True)
    settings.agent.facts = facts
    if spec.instructions is not None:
        settings.agent.instructions = spec.instructions
    assert models.llm is not None
    report = EvalReport(spec.name, models.llm.model)
    for conv in spec.conversations:
        await run_conversation(models, settings, conv, report)
    return report


def format_report(report: EvalReport, width: int = 60) -> str:
    """A table a person reads: one row per turn, failed checks named."""
    lines = [f"== {report.name} ({report.model})"]
    for t in report.turns:
        met = sum(c.ok for c in t.checks)
        reply = t.reply.replace("\n", " ")
        if t.tools:
            reply = " ".join(f"[{n}({json.dumps(a)})]" for n, a in t.tools) + " " + reply
        reply = reply if len(reply) <= width else reply[: width - 3] + "..."
        lines.append(f"{met}/{len(t.checks)}  {t.conversation:<22} {t.user[:32]:<32}  {reply}")
        for c in t.checks:
            if not c.ok:
                lines.append(f"      failed: {c.what}")
    lines.append(f"score {report.met}/{report.total} = {report.score:.0%}")
    return "\n".join(lines)
