"""Benchmark: voice-to-voice latency through real SIP/RTP against the in-process transport.

Both callers are the same script on the same models in the same process, alternating run by
run: four caller lines spoken by espeak-ng, each sent as 20 ms frames at real-time pace, and
the agent's voice detected by the caller with the same energy detector on 8 kHz audio. The
SIP caller dials the worker's SIP server on 127.0.0.1 and talks mu-law RTP over UDP, so its
figure adds the SIP transport (packetisation, jitter buffer, G.711 both ways, the sockets);
the in-process caller talks to a loopback call. Voice-to-voice is the time from the last frame
of a caller line leaving the caller to the first voiced frame of the reply arriving.

    python benchmarks/sip_latency.py [--runs 3] [--out benchmarks/results/sip_latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.loopback import LoopbackCall  # noqa: E402
from telephony.sip import SipServer  # noqa: E402
from tests.sip_tools import SipCaller  # noqa: E402
from worker import records  # noqa: E402
from worker.audio import resample  # noqa: E402
from worker.call import run_call  # noqa: E402
from worker.harness import RATE as HARNESS_RATE  # noqa: E402
from worker.harness import CallerVoice  # noqa: E402
from worker.local.server import LocalServer  # noqa: E402
from worker.models import Models, load_models  # noqa: E402
from worker.settings import load_settings  # noqa: E402

LINES = [
    "Hi, what time do you open tomorrow?",
    "I would like to book a table for four people at eight.",
    "Do you have a vegetarian menu?",
    "Great, thank you very much.",
]


class LoopbackCaller(SipCaller):
    """The same caller script against an in-process call: no sockets, no codec."""

    def __init__(self, call: LoopbackCall) -> None:
        self.call = call
        self.heard: list[np.ndarray] = []
        self.voiced_at: list[float] = []

    async def stream(self, pcm8k: np.ndarray) -> float:
        from livekit import rtc

        pcm = np.concatenate([pcm8k, np.zeros((-pcm8k.size) % 160, np.int16)]).astype(np.int16)
        start = time.monotonic()
        for i in range(pcm.size // 160):
            chunk = pcm[i * 160 : (i + 1) * 160]
            self.call.audio_input.push(rtc.AudioFrame(chunk.tobytes(), 8000, 1, 160))
            out = self.call.audio_output.read(160)
            self.heard.append(out)
            if float(np.sqrt(np.mean(out.astype(np.float64) ** 2))) > self.VOICED_RMS:
                self.voiced_at.append(time.time())
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
        return time.time()


async def _converse(caller: SipCaller, voice: CallerVoice) -> list[float]:
    """Greeting, then each line; returns voice-to-voice per line in ms."""
    await caller.wait_agent_quiet()
    out = []
    for line in LINES:
        pcm = resample(voice(line), HARNESS_RATE, 8000)  # 8 kHz is all a phone carries
        ended = await caller.stream(pcm)
        deadline = time.time() + 20
        while time.time() < deadline and not any(t > ended for t in caller.voiced_at):
            await caller.silence(0.02)
        first = next((t for t in caller.voiced_at if t > ended), None)
        if first is not None:
            out.append((first - ended) * 1000)
            await caller.wait_agent_quiet()
    return out


async def _sip_run(models: Models, local: LocalServer, voice: CallerVoice) -> list[float]:
    cfg = models.settings.sip.transport_config()
    cfg.port = 0
    server = SipServer(cfg, on_call=local.run_phone_call)
    await server.start()
    caller = SipCaller(server.address)
    try:
        await asyncio.to_thread(caller.dial)
        v2v = await _converse(caller, voice)
        await asyncio.to_thread(caller.hang_up)
    finally:
        caller.close()
        await server.stop()
    return v2v


async def _loopback_run(models: Models, voice: CallerVoice) -> list[float]:
    call = LoopbackCall(records.new_call_id(), input_rate=8000, output_rate=8000)
    caller = LoopbackCaller(call)
    session = asyncio.create_task(run_call(models, call, profile="telephony"))
    try:
        v2v = await _converse(caller, voice)
    finally:
        call.mark_ended("caller_hangup")
        await session
        await call.close()
    return v2v


def _summary(values: list[float]) -> dict[str, Any]:
    arr = np.array(values) if values else np.zeros(0)
    return {
        "turns": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 1) if values else None,
        "p95_ms": round(float(np.percentile(arr, 95)), 1) if values else None,
    }


async def main(runs: int, out: Path) -> None:
    settings = load_settings()
    models = await load_models(settings)
    local = LocalServer(models)
    voice = CallerVoice("en-us")
    sip: list[float] = []
    loop: list[float] = []
    per_run: list[dict[str, Any]] = []
    started = time.time()
    try:
        for run in range(runs):
            order = ("sip", "loopback") if run % 2 == 0 else ("loopback", "sip")
            for kind in order:
                v = (
                    await _sip_run(models, local, voice)
                    if kind == "sip"
                    else await _loopback_run(models, voice)
                )
                (sip if kind == "sip" else loop).extend(v)
                per_run.append({"run": run, "transport": kind, "voice_to_voice_ms": v})
                print(f"run {run + 1}/{runs} {kind}: {[round(x) for x in v]} ms", file=sys.stderr)
    finally:
        await local.stop()
        await models.aclose()
    s_sip, s_loop = _summary(sip), _summary(loop)
    ratio = round(statistics.median(sip) / statistics.median(loop), 2) if sip and loop else None
    doc = {
        "benchmark": "sip_latency",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "lines": LINES,
        "sip": s_sip,
        "in_process": s_loop,
        "p50_ratio_sip_over_in_process": ratio,
        "per_run": per_run,
    }
    _write(out, doc)
    print("| transport | turns | voice-to-voice P50 | P95 |")
    print("|---|---|---|---|")
    for name, s in (("SIP/RTP (127.0.0.1)", s_sip), ("in-process", s_loop)):
        print(f"| {name} | {s['turns']} | {s['p50_ms']} ms | {s['p95_ms']} ms |")
    print(f"\nP50 ratio SIP / in-process: {ratio}  (written to {out})")


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sip_latency.json")
    a = p.parse_args()
    asyncio.run(main(a.runs, a.out))
