"""Call records: one JSON Lines file per call, appended and flushed as each turn completes.

``WORKER_DATA_DIR/calls/<call_id>.jsonl`` holds a ``call_start``, one ``turn`` per completed
turn, ``dtmf`` events and a ``call_end``. A turn is on disk before the next one starts; a
reader skips a torn last line, so a killed worker loses nothing already written.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents.voice.events import ConversationItemAddedEvent


def new_call_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ().-]{7,}\d(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def redact(text: str) -> str:
    """Mask card numbers (13-19 digits passing the Luhn check) and phone numbers."""

    def card(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "[card]" if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)

    def phone(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "[phone]" if 9 <= len(digits) <= 15 else m.group(0)

    return _PHONE.sub(phone, _CARD.sub(card, text))


class CallRecord:
    """Appends records for one call; every write is flushed to the OS."""

    def __init__(self, calls_dir: Path, call_id: str, *, redact_numbers: bool = False) -> None:
        calls_dir.mkdir(parents=True, exist_ok=True)
        self.redact_numbers = redact_numbers
        self.call_id = call_id
        self.path = calls_dir / f"{call_id}.jsonl"
        self._lock = threading.Lock()
        self._f = self.path.open("a", encoding="utf-8")
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        if self.redact_numbers:
            record = {
                k: redact(v) if k in ("text", "caller") and isinstance(v, str) else v
                for k, v in record.items()
            }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._closed:
                return
            self._f.write(line + "\n")
            self._f.flush()

    def start(self, transport: str, **extra: Any) -> None:
        self.write(
            {
                "type": "call_start",
                "call_id": self.call_id,
                "transport": transport,
                "started_at": time.time(),
                **extra,
            }
        )

    def turn(
        self,
        role: str,
        text: str,
        started_at: float,
        ended_at: float,
        *,
        interrupted: bool | None = None,
        voice_to_voice_ms: float | None = None,
        **extra: Any,
    ) -> None:
        rec: dict[str, Any] = {
            "type": "turn", "role": role, "text": text,
            "started_at": started_at, "ended_at": ended_at,
        }  # fmt: skip
        if role == "agent":
            rec["interrupted"] = bool(interrupted)
            rec["voice_to_voice_ms"] = voice_to_voice_ms
        rec.update(extra)
        self.write(rec)

    def dtmf(self, digit: str) -> None:
        self.write({"type": "dtmf", "digit": digit, "at": time.time()})

    def end(self, reason: str) -> None:
        """Write ``call_end`` once, fsync, and close."""
        with self._lock:
            if self._closed:
                return
        self.write({"type": "call_end", "reason": reason, "ended_at": time.time()})
        with self._lock:
            self._closed = True
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


Annotate = Callable[[llm.ChatMessage], dict[str, Any]]


def _message_turn(record: CallRecord, msg: llm.ChatMessage, annotate: Annotate | None) -> None:
    extra = annotate(msg) if annotate is not None else {}
    text = msg.text_content or ""
    if not text.strip():
        return
    m = msg.metrics
    started = m.get("started_speaking_at") or msg.created_at
    ended = m.get("stopped_speaking_at") or msg.created_at
    if msg.role == "user":
        record.turn("user", text, started, ended, **extra)
    elif msg.role == "assistant":
        e2e = m.get("e2e_latency")
        record.turn(
            "agent", text, started, ended,
            interrupted=msg.interrupted,
            voice_to_voice_ms=round(e2e * 1000, 1) if e2e is not None else None,
            **extra,
        )  # fmt: skip


def attach(record: CallRecord, session: AgentSession, annotate: Annotate | None = None) -> None:
    """Write every completed turn of ``session`` to ``record`` as it is added; ``annotate``
    may add fields (timings, speculation) to a turn."""

    def on_item(ev: ConversationItemAddedEvent) -> None:
        if isinstance(ev.item, llm.ChatMessage):
            _message_turn(record, ev.item, annotate)

    session.on("conversation_item_added", on_item)


# --- reading -------------------------------------------------------------------------------


@dataclass
class CallSummary:
    call_id: str
    path: Path
    transport: str
    started_at: float
    turns: int
    ended: str | None


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records of a call file; a torn (unterminated or invalid) line is skipped."""
    out: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def iter_calls(calls_dir: Path) -> Iterator[Path]:
    if not calls_dir.exists():
        return iter(())
    return iter(sorted(calls_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime))


def summarize(path: Path) -> CallSummary:
    recs = read_records(path)
    start = next((r for r in recs if r.get("type") == "call_start"), {})
    end = next((r for r in recs if r.get("type") == "call_end"), None)
    return CallSummary(
        call_id=str(start.get("call_id", path.stem)),
        path=path,
        transport=str(start.get("transport", "?")),
        started_at=float(start.get("started_at", path.stat().st_mtime)),
        turns=sum(1 for r in recs if r.get("type") == "turn"),
        ended=str(end.get("reason")) if end else None,
    )


def transcript_text(recs: list[dict[str, Any]]) -> str:
    """A call as plain text: who said what, key presses, how it ended."""
    lines = []
    for r in recs:
        kind = r.get("type")
        when = time.strftime("%H:%M:%S", time.localtime(r.get("started_at") or r.get("at") or 0))
        if kind == "call_start":
            day = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("started_at", 0)))
            who = r.get("caller") or "unknown"
            lines.append(f"call {r.get('call_id')} via {r.get('transport')} from {who} at {day}")
        elif kind == "turn":
            who = "Agent" if r.get("role") == "agent" else "Caller"
            cut = " [interrupted]" if r.get("interrupted") else ""
            lines.append(f"[{when}] {who}: {r.get('text', '')}{cut}")
        elif kind == "dtmf":
            lines.append(f"[{when}] (key {r.get('digit')})")
        elif kind == "call_end":
            lines.append(f"call ended: {r.get('reason')}")
    return "\n".join(lines) + "\n"


def export(calls_dir: Path, out_dir: Path) -> list[Path]:
    """Write each call as ``<id>.json`` (its records) and ``<id>.txt`` (a transcript)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in iter_calls(calls_dir):
        recs = read_records(path)
        stem = out_dir / path.stem
        stem.with_suffix(".json").write_text(json.dumps(recs, indent=2, ensure_ascii=False))
        stem.with_suffix(".txt").write_text(transcript_text(recs), encoding="utf-8")
        written.append(stem)
    return written
