"""Call records are flushed turn by turn and survive a torn last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker import records


def test_each_turn_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    rec = records.CallRecord(tmp_path, "c1")
    rec.start("loopback")
    rec.turn("user", "hello", 1.0, 2.0)
    # another reader sees it before the call ends
    assert [r["type"] for r in records.read_records(rec.path)] == ["call_start", "turn"]
    rec.turn("agent", "hi there", 2.5, 3.5, interrupted=True, voice_to_voice_ms=812.0)
    rec.dtmf("5")
    rec.end("caller_hangup")
    rec.end("again")  # idempotent
    recs = records.read_records(rec.path)
    assert [r["type"] for r in recs] == ["call_start", "turn", "turn", "dtmf", "call_end"]
    agent = recs[2]
    assert agent["interrupted"] is True and agent["voice_to_voice_ms"] == 812.0
    assert recs[-1]["reason"] == "caller_hangup"


def test_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c2.jsonl"
    path.write_text('{"type":"call_start","call_id":"c2"}\n{"type":"turn","role":"us')
    assert records.read_records(path) == [{"type": "call_start", "call_id": "c2"}]


def test_calls_command_prints_the_newest_call(tmp_path: Path) -> None:
    for cid in ("a", "b"):
        rec = records.CallRecord(tmp_path / "calls", cid)
        rec.start("loopback")
        rec.turn("user", f"from {cid}", 1.0, 2.0)
        rec.end("hangup")
    out = subprocess.run(
        [sys.executable, "-m", "worker", "calls", "--last", "--json", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    recs = json.loads(out.stdout)
    assert recs[0]["call_id"] == "b"
    assert recs[1]["text"] == "from b"
    listing = subprocess.run(
        [sys.executable, "-m", "worker", "calls", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "a " in listing.stdout and "b " in listing.stdout
