"""Call records are flushed turn by turn and survive a torn last line."""

from __future__ import annotations

import json
import os
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


def test_export_writes_json_and_a_readable_transcript(tmp_path: Path) -> None:
    rec = records.CallRecord(tmp_path / "calls", "c9")
    rec.start("sip", caller="15550100")
    rec.turn("agent", "Hello! How can I help you today?", 1.0, 2.0)
    rec.turn("user", "I need to change my booking.", 3.0, 4.0)
    rec.dtmf("7")
    rec.end("caller_hangup")
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "calls", "--export", str(tmp_path / "out"),
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out" / "c9.json").read_text())
    assert [r["type"] for r in data] == ["call_start", "turn", "turn", "dtmf", "call_end"]
    text = (tmp_path / "out" / "c9.txt").read_text()
    assert "via sip from 15550100" in text
    assert "Agent: Hello! How can I help you today?" in text
    assert "Caller: I need to change my booking." in text
    assert "(key 7)" in text and "call ended: caller_hangup" in text


def test_card_and_phone_numbers_are_redacted_when_asked(tmp_path: Path) -> None:
    said = "Card 4111 1111 1111 1111, call me on +1 (555) 123-4567; booking 12345 for 2026."
    plain = records.CallRecord(tmp_path, "plain")
    plain.turn("user", said, 1.0, 2.0)
    masked = records.CallRecord(tmp_path, "masked", redact_numbers=True)
    masked.start("sip", caller="+15551234567")
    masked.turn("user", said, 1.0, 2.0)
    assert records.read_records(plain.path)[0]["text"] == said
    start, turn = records.read_records(masked.path)
    assert start["caller"] == "[phone]"
    assert turn["text"] == "Card [card], call me on [phone]; booking 12345 for 2026."
    # a 16-digit number that fails the Luhn check is not a card
    assert records.redact("ref 1234 5678 9012 3456") == "ref 1234 5678 9012 3456"


def test_a_reader_that_leaves_stops_the_listing_quietly(tmp_path: Path) -> None:
    """`python -m worker calls | head`: the reader closes the pipe before the listing is
    written; the command ends without a traceback."""
    rec = records.CallRecord(tmp_path / "calls", "a")
    rec.start("loopback")
    rec.end("hangup")
    read, write = os.pipe()
    os.close(read)  # gone before the command (a new interpreter) writes its first line
    try:
        res = subprocess.run(
            [sys.executable, "-m", "worker", "calls", "--data-dir", str(tmp_path)],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert res.returncode == 141, res.stderr
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


def test_the_worker_is_not_killed_by_sigpipe() -> None:
    """A worker writing to a socket its peer has closed (a caller's WebSocket, a model server
    being restarted) must get an error for that write, not die of SIGPIPE: importing the CLI
    (every `python -m worker` command, the dev worker included) leaves the signal ignored."""
    code = "import signal, worker.cli; print(signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "True", out.stdout + out.stderr
