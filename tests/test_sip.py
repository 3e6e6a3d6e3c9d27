"""Phone calls over direct SIP/RTP with real SIP peers (SIPp, baresip) and the real models.

SIPp (Debian sip-tester) plays caller audio as mu-law RTP from a pcap and RFC 2833 digits
from the pcaps it ships; baresip (Debian baresip-core) dials in and records what it hears.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plugins.audio import read_wav, resample, write_wav
from telephony.sip import SipServer
from worker import records
from worker.local.server import LocalServer
from worker.models import load_models
from worker.settings import Settings

from .conftest import word_error_rate
from .fake_llm import tool_calling_llm
from .sip_tools import (
    DTMF_PCAPS,
    RawSip,
    caller_scenario,
    free_udp_port,
    invite,
    run_sipp,
    wav_to_pcap,
)

pytestmark = [pytest.mark.models, pytest.mark.slow]


async def _serve(settings: Settings, **sip: Any) -> tuple[LocalServer, SipServer, Any]:
    settings.sip.listen = "127.0.0.1:0"
    for k, v in sip.items():
        setattr(settings.sip, k, v)
    models = await load_models(settings)
    local = LocalServer(models)
    server = SipServer(settings.sip, on_call=local.run_phone_call)
    await server.start()
    return local, server, models


async def _shutdown(local: LocalServer, server: SipServer, models: Any) -> None:
    await server.stop()
    await local.stop()
    await models.aclose()


def _records(settings: Settings) -> list[list[dict[str, Any]]]:
    return [records.read_records(p) for p in records.iter_calls(settings.calls_dir)]


async def test_sipp_call_is_transcribed_answered_and_records_dtmf(
    settings: Settings, espeak: Any, tmp_path: Path
) -> None:
    local, server, models = await _serve(settings)
    speech = wav_to_pcap(espeak("I would like to order a pizza for delivery tonight."),
                         tmp_path / "caller.pcap")  # fmt: skip
    scenario = caller_scenario([
        ("pause", 4000),  # the greeting plays
        ("play", tmp_path / "caller.pcap"),
        ("pause", speech * 1000 + 10000),  # the agent answers
        ("play", DTMF_PCAPS / "dtmf_2833_1.pcap"),
        ("pause", 800),
        ("play", DTMF_PCAPS / "dtmf_2833_pound.pcap"),
        ("pause", 1500),
    ])  # fmt: skip
    try:
        run = await asyncio.to_thread(run_sipp, scenario, server.address, tmp_path, timeout=90)
        await asyncio.sleep(0.5)
    finally:
        await _shutdown(local, server, models)
    assert run.returncode == 0, (run.stdout, run.errors)
    (recs,) = _records(settings)
    assert recs[0]["type"] == "call_start"
    assert recs[0]["transport"] == "sip" and recs[0]["caller"] == "15551234567"
    turns = [r for r in recs if r["type"] == "turn"]
    users = [t for t in turns if t["role"] == "user"]
    assert users and "pizza" in users[0]["text"].lower(), turns
    later = [t for t in turns if t["role"] == "agent" and t["started_at"] > users[0]["started_at"]]
    assert later and later[0]["text"].strip(), "the agent replied to the caller"
    assert [r["digit"] for r in recs if r["type"] == "dtmf"] == ["1", "#"]
    assert recs[-1]["type"] == "call_end" and recs[-1]["reason"] == "caller_hangup"


BARESIP_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{port}
audio_player\t\taubridge,nil
audio_source\t\taufile,{source}
audio_alert\t\taubridge,nil
audio_srate\t\t8000
audio_channels\t\t1
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\taufile.so
module\t\t\taubridge.so
module\t\t\tsndfile.so
module_app\t\taccount.so
module_app\t\tmenu.so
snd_path\t\t{record_dir}
"""


async def test_baresip_caller_hears_the_greeting(settings: Settings, tmp_path: Path) -> None:
    exe = shutil.which("baresip")
    if exe is None:
        pytest.fail("baresip is needed (apt-get install baresip-core)")
    local, server, models = await _serve(settings)
    cfg, rec = tmp_path / "baresip", tmp_path / "heard"
    cfg.mkdir()
    rec.mkdir()
    silence = tmp_path / "silence.wav"
    write_wav(silence, np.zeros(8000 * 20, np.int16), 8000)  # baresip's microphone
    (cfg / "config").write_text(
        BARESIP_CONFIG.format(port=free_udp_port(), source=silence, record_dir=rec)
    )
    (cfg / "accounts").write_text("<sip:caller@127.0.0.1>;regint=0;audio_codecs=PCMA\n")
    host, port = server.address
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "-f", str(cfg), "-e", f"/dial sip:agent@{host}:{port}", "-t", "9",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 40)
        await asyncio.sleep(0.5)
        assert models.stt is not None
        heard = sorted(rec.glob("*-dec.wav"))
        assert heard, out.decode(errors="replace")[-2000:]
        pcm, rate = read_wav(heard[0])
        text = await models.stt.transcribe_async(
            resample(pcm, rate, 16000).astype(np.float32) / 32768.0
        )
    finally:
        await _shutdown(local, server, models)
    log = out.decode(errors="replace")
    assert "Call established" in log, log[-2000:]
    greeting = settings.agent.greeting
    assert word_error_rate(greeting, text) < 0.5, (greeting, text)
    (recs,) = _records(settings)
    assert recs[0]["transport"] == "sip" and recs[0]["caller"] == "caller"
    assert recs[-1]["type"] == "call_end" and recs[-1]["reason"] == "caller_hangup"


async def test_ten_concurrent_calls_and_the_eleventh_is_busy(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    local, server, models = await _serve(settings, max_calls=10)
    scenario = caller_scenario([("pause", 6000)])
    extra = RawSip()
    try:
        sipp = asyncio.ensure_future(
            asyncio.to_thread(run_sipp, scenario, server.address, tmp_path, calls=10, rate=10)
        )
        for _ in range(200):
            if server.active_calls == 10:
                break
            await asyncio.sleep(0.05)
        assert server.active_calls == 10
        extra.send(invite(server.address, extra.port, call_id="eleventh"), server.address)
        code, _ = await asyncio.to_thread(extra.recv_status)
        run = await sipp
        await asyncio.sleep(1.0)
    finally:
        extra.close()
        await _shutdown(local, server, models)
    assert code in (486, 503)
    assert run.returncode == 0, (run.stdout, run.errors)
    calls = _records(settings)
    assert len(calls) == 10
    assert all(c[-1]["type"] == "call_end" and c[-1]["reason"] == "caller_hangup" for c in calls)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_agent_end_call_tool_says_goodbye_and_sends_bye(
    settings: Settings, espeak: Any, tmp_path: Path
) -> None:
    requests: list[dict[str, Any]] = []
    runner, url = await tool_calling_llm(requests, {"": "end_call"})
    settings.llm.base_url = url
    local, server, models = await _serve(settings)
    wav_to_pcap(espeak("Thank you, that is all. Goodbye."), tmp_path / "bye.pcap")
    scenario = caller_scenario(
        [("pause", 4000), ("play", tmp_path / "bye.pcap")], hangup="agent", bye_timeout_ms=25000
    )
    try:
        run = await asyncio.to_thread(run_sipp, scenario, server.address, tmp_path, timeout=60)
        await asyncio.sleep(0.5)
    finally:
        await _shutdown(local, server, models)
        await runner.cleanup()
    assert run.returncode == 0, (run.stdout, run.errors)
    assert any("end_call" in json.dumps(r.get("tools", [])) for r in requests)
    (recs,) = _records(settings)
    agent_turns = [r["text"] for r in recs if r.get("role") == "agent"]
    assert settings.agent.goodbye in agent_turns, agent_turns
    assert recs[-1]["type"] == "call_end" and recs[-1]["reason"] == "agent_hangup"
