"""A whole call with every secret configured and logging at DEBUG: no secret reaches the
logs or the call record. The same call records both sides to WAV when asked."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from plugins.audio import read_wav, resample
from telephony.loopback import LoopbackCall
from worker import records
from worker.call import run_call
from worker.models import load_models
from worker.settings import Settings

pytestmark = [pytest.mark.models, pytest.mark.slow]

SECRETS = {
    "llm": "sk-llm-5ecret-9f8e7d6c",
    "sip": "sip-5ecret-pass-42",
    "twilio": "tw-5ecret-token-77",
    "livekit": "lk-5ecret-api-key-secret-0123456789",
}


async def test_no_secret_in_logs_or_records_and_both_sides_recorded(
    settings: Settings, espeak: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.llm.api_key = SecretStr(SECRETS["llm"])
    settings.sip.username, settings.sip.password = "alice", SecretStr(SECRETS["sip"])
    settings.twilio.auth_token = SecretStr(SECRETS["twilio"])
    settings.livekit.api_key, settings.livekit.api_secret = "key", SecretStr(SECRETS["livekit"])
    settings.records.audio = True
    logging.getLogger().info("settings: %s", settings)  # what a careless log line would show
    models = await load_models(settings)
    call = LoopbackCall(records.new_call_id(), input_rate=16000)
    call.start_listening()
    pcm, rate = read_wav(espeak("What time do you open tomorrow?"))

    async def caller() -> None:
        await call.silence_until_reply(1)
        await call.play(resample(pcm, rate, 16000))
        await call.silence_until_reply(2)
        await call.silence(1.0)
        call.mark_ended("caller_hangup")

    script = asyncio.create_task(caller())
    try:
        result = await asyncio.wait_for(run_call(models, call, profile="telephony"), 240)
        await script
    finally:
        await call.close()
        await models.aclose()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    on_disk = result.record.path.read_text()
    assert len(caplog.records) > 20, "DEBUG logging of a whole call was captured"
    for name, secret in SECRETS.items():
        assert secret not in logged, f"the {name} secret was logged"
        assert secret not in on_disk, f"the {name} secret is in the call record"
    # both sides were recorded, aligned in time
    rec_dir = settings.data_dir / "recordings"
    with wave.open(str(rec_dir / f"{call.call_id}.caller.wav")) as w:
        caller_s = w.getnframes() / w.getframerate()
    with wave.open(str(rec_dir / f"{call.call_id}.agent.wav")) as w:
        agent_s = w.getnframes() / w.getframerate()
        agent = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        agent_rate = w.getframerate()
    assert caller_s > 10 and abs(caller_s - agent_s) < 1.0, (caller_s, agent_s)
    assert np.abs(agent).max() > 1000, "the agent's side holds speech"
    assert agent_rate == call.audio_output.rate


def test_cli_with_secrets_in_the_environment_logs_none(data_dir: Path) -> None:
    env_secrets = {
        "WORKER_LLM__API_KEY": SECRETS["llm"], "WORKER_SIP__PASSWORD": SECRETS["sip"],
        "WORKER_TWILIO__AUTH_TOKEN": SECRETS["twilio"],
    }  # fmt: skip
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "worker", "check", "--log-level", "DEBUG",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=180, env={**os.environ, **env_secrets},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "DEBUG" in out
    for secret in env_secrets.values():
        assert secret not in out
