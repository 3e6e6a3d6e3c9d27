"""The worker process under SIGTERM and SIGKILL during a phone call (real SIP and RTP from a
Python phone, `python -m worker dev --sip` in a subprocess on the real models)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from plugins.audio import read_wav, resample
from plugins.net import free_port
from worker import records

from .sip_tools import RawSip, SipCaller, free_udp_port, invite

pytestmark = [pytest.mark.models, pytest.mark.slow]


def _start(data_dir: Path, **env: str) -> tuple[subprocess.Popen[str], tuple[str, int], str]:
    sip, http = free_udp_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "dev", "--sip", f"127.0.0.1:{sip}",
         "--http", f"127.0.0.1:{http}", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready in" in line:
            return proc, ("127.0.0.1", sip), f"http://127.0.0.1:{http}"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("the worker did not start")


def _records(data_dir: Path) -> list[dict[str, Any]]:
    paths = list(records.iter_calls(data_dir / "calls"))
    return records.read_records(paths[-1]) if paths else []


def _http_checks(http: str) -> tuple[dict[str, Any], tuple[int, bytes]]:
    with urllib.request.urlopen(f"{http}/healthz") as r:
        health = json.loads(r.read())
    req = urllib.request.Request(f"{http}/offer", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return health, (r.status, r.read())
    except urllib.error.HTTPError as e:
        return health, (e.code, e.read())


async def _talk(phone: SipCaller, seconds: float, pcm: Any = None) -> None:
    if pcm is not None:
        await phone.stream(pcm)
    await phone.silence(seconds)


def _wait_for_bye(sock: socket.socket, limit: float) -> bytes | None:
    sock.settimeout(0.5)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535)
        except OSError:
            continue
        if data.startswith(b"BYE "):
            return data
    return None


async def test_sigterm_drains_then_says_goodbye_and_hangs_up(data_dir: Path) -> None:
    proc, target, http = _start(data_dir, WORKER_DRAIN_TIMEOUT="3")
    phone = SipCaller(target)
    try:
        await asyncio.to_thread(phone.dial)
        await _talk(phone, 4.0)  # the greeting
        proc.send_signal(signal.SIGTERM)
        await _talk(phone, 0.5)
        # no new calls: SIP says 503, the page's offer endpoint and health say draining
        late = RawSip()
        late.send(invite(target, late.port, call_id="late"), target)
        code, _ = await asyncio.to_thread(late.recv_status)
        late.close()
        assert code == 503
        health, offer = await asyncio.to_thread(_http_checks, http)
        assert health["status"] == "draining"
        assert offer[0] == 503 and b"shutting down" in offer[1]
        # the call goes on through the drain time, then hears the closing line and a BYE
        talking = asyncio.create_task(_talk(phone, 20.0))
        bye = await asyncio.to_thread(_wait_for_bye, phone.sip.sock, 25.0)
        talking.cancel()
        assert bye is not None, "the worker hung up with a BYE"
        rc = await asyncio.to_thread(proc.wait, 30)
        assert rc == 0
    finally:
        phone.close()
        if proc.poll() is None:
            proc.kill()
    recs = _records(data_dir)
    assert recs[-1]["type"] == "call_end" and recs[-1]["reason"] == "worker_shutdown"
    said = [r["text"] for r in recs if r.get("role") == "agent"]
    assert any(t.startswith("I'm sorry, I have to end our call now") for t in said), said
    ended = recs[-1]["ended_at"] - recs[0]["started_at"]
    assert ended > 4.0 + 3.0, "active calls were given the drain time"


async def test_sigkill_loses_no_completed_turn(data_dir: Path, espeak: Any) -> None:
    proc, target, _ = _start(data_dir)
    phone = SipCaller(target)
    pcm, rate = read_wav(espeak("I would like to order a pizza for delivery tonight."))
    try:
        await asyncio.to_thread(phone.dial)
        await _talk(phone, 4.0)
        talking = asyncio.create_task(_talk(phone, 25.0, resample(pcm, rate, 8000)))
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            roles = [r.get("role") for r in _records(data_dir) if r["type"] == "turn"]
            if roles.count("agent") >= 2 and "user" in roles:
                break
            await asyncio.sleep(0.2)
        proc.kill()  # SIGKILL: no chance to flush or close anything
        proc.wait(10)
        talking.cancel()
    finally:
        phone.close()
        if proc.poll() is None:
            proc.kill()
    recs = _records(data_dir)
    turns = [r for r in recs if r["type"] == "turn"]
    assert recs[0]["type"] == "call_start" and recs[-1]["type"] != "call_end"
    assert any(t["role"] == "user" and "pizza" in t["text"].lower() for t in turns), turns
    assert sum(t["role"] == "agent" for t in turns) >= 2
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", "calls", "--last", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "pizza" in out.stdout.lower()
