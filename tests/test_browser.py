"""End to end in a real browser: headless Chromium talks to `python -m worker dev`.

Chromium's fake microphone plays an espeak-ng caller question; the call record must then
hold the greeting, the transcribed question and an agent reply.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugins.net import free_port
from worker import records

pytestmark = [pytest.mark.models, pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is needed for the browser test (apt-get install chromium)")


def _caller_wav(espeak, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """5 s of silence (the greeting plays), the question, then 15 s to answer."""
    speech = espeak("What time does the pharmacy open tomorrow morning?")
    subprocess.run(
        ["sox", "-n", "-r", "22050", "-c", "1", str(out.with_suffix(".pre.wav")), "trim", "0", "5"],
        check=True,
    )
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "22050",
            "-c",
            "1",
            str(out.with_suffix(".post.wav")),
            "trim",
            "0",
            "15",
        ],
        check=True,
    )
    subprocess.run(
        [
            "sox",
            str(out.with_suffix(".pre.wav")),
            str(speech),
            str(out.with_suffix(".post.wav")),
            str(out),
        ],
        check=True,
    )
    return out


def test_browser_caller_holds_a_conversation(data_dir: Path, espeak, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("sox") is None:
        pytest.fail("sox is needed to assemble the caller audio (apt-get install sox)")
    wav = _caller_wav(espeak, tmp_path / "caller.wav")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "WORKER_"))}
    cmd = [sys.executable, "-m", "worker", "dev", "--http", f"127.0.0.1:{port}"]
    worker = subprocess.Popen(
        [*cmd, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "worker.log", "wb"), text=True, env=env,
    )  # fmt: skip
    browser = None
    try:
        assert worker.stdout is not None
        ready = worker.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in ready, (tmp_path / "worker.log").read_text()
        browser = subprocess.Popen(
            [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
             f"--use-file-for-fake-audio-capture={wav}", f"http://127.0.0.1:{port}/?autoconnect=1"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "chromium.log", "wb"),
        )  # fmt: skip
        deadline = time.monotonic() + 90
        turns: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            calls = list(records.iter_calls(data_dir / "calls"))
            if calls:
                turns = [r for r in records.read_records(calls[-1]) if r["type"] == "turn"]
                users = [i for i, t in enumerate(turns) if t["role"] == "user"]
                if users and any(t["role"] == "agent" for t in turns[users[0] + 1 :]):
                    break
            time.sleep(0.5)
        assert turns, "no call was recorded: the page did not connect"
        assert turns[0]["role"] == "agent" and turns[0]["text"].startswith("Hello")
        user = next(t for t in turns if t["role"] == "user")
        assert "pharmacy" in user["text"].lower() or "open tomorrow" in user["text"].lower(), turns
        reply = turns[turns.index(user) + 1 :]
        assert any(t["role"] == "agent" and t["text"].strip() for t in reply), turns
    finally:
        if browser is not None:
            browser.kill()
            browser.wait()
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert worker.returncode == 0
    last = records.read_records(list(records.iter_calls(data_dir / "calls"))[-1])
    assert last[-1]["type"] == "call_end"
