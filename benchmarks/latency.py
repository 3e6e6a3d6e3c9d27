"""Benchmark: voice-to-voice latency through real SIP/RTP and Twilio Media Streams against
the in-process transport.

The callers are the same script on the same models in the same process, taking turns run by
run: four caller lines spoken by espeak-ng, each sent as 20 ms frames at real-time pace, and
the agent's voice detected by the caller with the same energy detector on 8 kHz audio. The
SIP caller dials the worker's SIP server on 127.0.0.1 and talks mu-law RTP over UDP, so its
figure adds the SIP transport (packetisation, jitter buffer, G.711 both ways, the sockets);
the Twilio caller opens the worker's ``/twilio/media`` WebSocket and sends and receives
base64 mu-law ``media`` events as Twilio does; the in-process caller talks to a loopback call.
Voice-to-voice is the time from the last frame of a caller line leaving the caller to the
first voiced frame of the reply arriving; time to greeting from the call being answered (the
SIP 200 OK, the stream's ``start`` event) to the greeting's first voiced frame. The caller is
espeak-ng en-us unless ``--caller`` names a voice of ``callers.py`` ("kokoro:bf_emma",
"piper:joe", "espeak:en-gb:140"), whose lines are rendered once before the runs, or
``--split held-back`` (or ``tuning``) takes a different voice of that set for every run (the
three transports of a run share it), so the figures are over many callers no tuning saw.

    python benchmarks/sip_latency.py [--runs 3] [--caller VOICE | --split SET] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins.audio import g711_decode, g711_encode, resample  # noqa: E402
from plugins.net import free_port  # noqa: E402
from telephony.loopback import LoopbackCall  # noqa: E402
from telephony.sip import SipServer  # noqa: E402
from tests.sip_tools import SipCaller  # noqa: E402
from worker import records  # noqa: E402
from worker.call import run_call  # noqa: E402
from worker.harness import RATE as HARNESS_RATE  # noqa: E402
from worker.harness import CallerVoice  # noqa: E402
from worker.local.server import LocalServer  # noqa: E402
from worker.models import Models, load_models  # noqa: E402
from worker.settings import load_settings  # noqa: E402

Voice = Callable[[str], np.ndarray]
"""A caller: 16 kHz int16 samples of a line."""

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


class TwilioCaller(SipCaller):
    """The same caller script over Twilio Media Streams: JSON ``media`` events of base64
    mu-law, 20 ms each, on the worker's WebSocket; what comes back is the agent's audio."""

    STREAM = "MZbench"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.heard: list[np.ndarray] = []
        self.voiced_at: list[float] = []

    async def receive(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("event") == "media":
                pcm = g711_decode(base64.b64decode(data["media"]["payload"]))
                self.heard.append(pcm)
                if float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > self.VOICED_RMS:
                    self.voiced_at.append(time.time())

    async def start(self) -> None:
        """What Twilio sends when the call is answered and the stream opens."""
        await self.ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.ws.send_json(
            {"event": "start", "sequenceNumber": "1", "streamSid": self.STREAM,
             "start": {"streamSid": self.STREAM, "callSid": "CAbench", "accountSid": "ACbench",
                       "tracks": ["inbound"], "customParameters": {"from": "+15550100"},
                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                       "channels": 1}}}
        )  # fmt: skip

    async def stream(self, pcm8k: np.ndarray) -> float:
        pcm = np.concatenate([pcm8k, np.zeros((-pcm8k.size) % 160, np.int16)]).astype(np.int16)
        start = time.monotonic()
        for i in range(pcm.size // 160):
            payload = base64.b64encode(g711_encode(pcm[i * 160 : (i + 1) * 160])).decode()
            await self.ws.send_json(
                {"event": "media", "streamSid": self.STREAM,
                 "media": {"track": "inbound", "payload": payload}}
            )  # fmt: skip
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
        return time.time()


async def _converse(
    caller: SipCaller, voice: Voice, answered: float
) -> tuple[list[float], float | None]:
    """Greeting, then each line; returns voice-to-voice per line and the time from the call
    being answered to the greeting's first voiced audio at the caller, in ms."""
    await caller.wait_agent_quiet()
    greeting = (caller.voiced_at[0] - answered) * 1000 if caller.voiced_at else None
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
    return out, greeting


async def _sip_run(
    models: Models, local: LocalServer, voice: Voice
) -> tuple[list[float], float | None]:
    cfg = models.settings.sip.model_copy(update={"listen": "127.0.0.1:0"})
    server = SipServer(cfg, on_call=local.run_phone_call)
    await server.start()
    caller = SipCaller(server.address)
    try:
        await asyncio.to_thread(caller.dial)  # returns on the 200 OK
        v2v = await _converse(caller, voice, time.time())
        await asyncio.to_thread(caller.hang_up)
    finally:
        caller.close()
        await server.stop()
    return v2v


async def _twilio_run(port: int, voice: Voice) -> tuple[list[float], float | None]:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/twilio/media")
        caller = TwilioCaller(ws)
        receiver = asyncio.create_task(caller.receive())
        try:
            await caller.start()
            v2v = await _converse(caller, voice, time.time())
            await ws.send_json({"event": "stop", "streamSid": caller.STREAM, "stop": {}})
            await asyncio.wait_for(receiver, 10)
        finally:
            receiver.cancel()
            await ws.close()
    return v2v


async def _loopback_run(models: Models, voice: Voice) -> tuple[list[float], float | None]:
    call = LoopbackCall(records.new_call_id(), input_rate=8000, output_rate=8000)
    caller = LoopbackCaller(call)
    answered = time.time()
    session = asyncio.create_task(run_call(models, call, profile="telephony"))
    try:
        v2v = await _converse(caller, voice, answered)
    finally:
        call.mark_ended("caller_hangup")
        await session
        await call.close()
    return v2v


STAGES = [
    ("stt_final_ms", "STT final after the worker's end of speech"),
    ("end_of_turn_ms", "end-of-turn decision after end of speech"),
    ("llm_first_token_ms", "LLM first token after its request"),
    ("tts_first_audio_ms", "TTS first audio after its request"),
    ("voice_to_voice_ms", "first audio sent after end of speech (worker)"),
]


def _record_timings(calls_dir: Path, before: set[Path]) -> list[dict[str, Any]]:
    """The agent turns' stage timings from the call record(s) this run wrote."""
    out = []
    for path in sorted(set(calls_dir.glob("*.jsonl")) - before):
        for rec in records.read_records(path):
            t = rec.get("timings") or {}
            if rec.get("type") == "turn" and rec.get("role") == "agent" and t.get("stt_final_ms"):
                out.append(t)
    return out


def _stages(timings: list[dict[str, Any]], caller_v2v: list[float]) -> dict[str, Any]:
    """Per-stage medians (ms); the last stage is what the caller measured on the line."""
    med: dict[str, Any] = {}
    for key, _ in STAGES:
        vals = [t[key] for t in timings if t.get(key) is not None]
        med[key] = round(statistics.median(vals), 1) if vals else None
    med["at_the_caller_ms"] = round(statistics.median(caller_v2v), 1) if caller_v2v else None
    return med


def _plot(stages: dict[str, dict[str, Any]], out: Path) -> Path | None:
    """A PNG of the stage medians per transport, when matplotlib (extra `bench`) is there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plot", file=sys.stderr)
        return None
    labels = [label for _, label in STAGES] + ["first audio heard by the caller"]
    keys = [k for k, _ in STAGES] + ["at_the_caller_ms"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    height = 0.8 / max(1, len(stages))
    for i, (name, med) in enumerate(stages.items()):
        ys = [j + i * height for j in range(len(keys))]
        ax.barh(ys, [med.get(k) or 0 for k in keys], height=height, label=name)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(keys))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("median, ms")
    ax.set_title("Voice-to-voice stages per transport (2 cores, default models)")
    ax.legend()
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _summary(values: list[float]) -> dict[str, Any]:
    arr = np.array(values) if values else np.zeros(0)
    return {
        "turns": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 1) if values else None,
        "p95_ms": round(float(np.percentile(arr, 95)), 1) if values else None,
    }


def _callers(name: str | None, split: str | None, runs: int) -> list[tuple[Voice, str]]:
    """One caller per run: espeak-ng en-us, the named voice, or a spread of a corpus set."""
    if name is None and split is None:
        return [(CallerVoice("en-us"), "espeak:en-us")] * runs
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from callers import Corpus

    corpus = Corpus.load()
    if split is not None:
        pool = corpus.voices(split)  # type: ignore[arg-type]
        names = [pool[(i * 7) % len(pool)] for i in range(runs)]  # spread over the set
    else:
        names = [name or ""] * runs
    out: list[tuple[Voice, str]] = []
    for n in names:
        rendered = {line: corpus.render(line, n, "16k") for line in LINES}
        out.append((rendered.__getitem__, n))
    return out


async def main(runs: int, out: Path, caller: str | None = None, split: str | None = None) -> None:
    settings = load_settings()
    models = await load_models(settings)
    local = LocalServer(models)
    port = free_port()
    await local.start("127.0.0.1", port)  # the HTTP server, for Twilio's WebSocket
    callers = _callers(caller, split, runs)
    kinds = ("sip", "twilio", "loopback")
    v2v: dict[str, list[float]] = {k: [] for k in kinds}
    greetings: dict[str, list[float]] = {k: [] for k in kinds}
    timings: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    per_run: list[dict[str, Any]] = []
    started = time.time()
    try:
        for run in range(runs):
            voice, caller_name = callers[run]
            order = kinds[run % 3 :] + kinds[: run % 3]  # each transport first once in three
            for kind in order:
                before = set(settings.calls_dir.glob("*.jsonl"))
                if kind == "sip":
                    v, greeting = await _sip_run(models, local, voice)
                elif kind == "twilio":
                    v, greeting = await _twilio_run(port, voice)
                else:
                    v, greeting = await _loopback_run(models, voice)
                v2v[kind].extend(v)
                timings[kind].extend(_record_timings(settings.calls_dir, before))
                if greeting is not None:
                    greetings[kind].append(greeting)
                per_run.append(
                    {"run": run, "transport": kind, "caller": caller_name,
                     "voice_to_voice_ms": v, "time_to_greeting_ms": greeting}
                )  # fmt: skip
                print(f"run {run + 1}/{runs} {kind} ({caller_name}): {[round(x) for x in v]} ms, "
                      f"greeting {greeting and round(greeting)} ms", file=sys.stderr)  # fmt: skip
        opened = list(getattr(models.tts, "openings", [0, 0]))
    finally:
        await local.stop()
        await models.aclose()
    summaries = {k: _summary(v2v[k]) for k in kinds}
    for kind, summary in summaries.items():
        g = greetings[kind]
        summary["time_to_greeting_p50_ms"] = round(statistics.median(g), 1) if g else None
    names = {"sip": "SIP/RTP", "twilio": "Twilio Media Streams", "loopback": "in-process"}
    stages = {names[k]: _stages(timings[k], v2v[k]) for k in kinds}
    sip, loop = v2v["sip"], v2v["loopback"]
    s_sip, s_loop = summaries["sip"], summaries["loopback"]
    ratio = round(statistics.median(sip) / statistics.median(loop), 2) if sip and loop else None
    doc = {
        "benchmark": "sip_latency",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "lines": LINES,
        "caller": split or caller or "espeak:en-us",
        "callers": sorted({c for _, c in callers}),
        "sip": s_sip,
        "in_process": s_loop,
        "twilio": summaries["twilio"],
        "p50_ratio_sip_over_in_process": ratio,
        "stage_medians_ms": stages,
        "replies_opened_from_the_piece_cache": {"replies": opened[0], "from_cache": opened[1]},
        "per_run": per_run,
    }
    _write(out, doc)
    print("| transport | turns | voice-to-voice P50 | P95 | time to greeting P50 |")
    print("|---|---|---|---|---|")
    rows = (("SIP/RTP (127.0.0.1)", s_sip), ("Twilio Media Streams (127.0.0.1)",
            summaries["twilio"]), ("in-process", s_loop))  # fmt: skip
    for name, s in rows:
        print(f"| {name} | {s['turns']} | {s['p50_ms']} ms | {s['p95_ms']} ms "
              f"| {s['time_to_greeting_p50_ms']} ms |")  # fmt: skip
    print(f"\nP50 ratio SIP / in-process: {ratio}  (written to {out})")
    print(f"replies whose first piece came from the piece cache: {opened[1]} of {opened[0]}")
    print("\n| stage (median ms) | " + " | ".join(stages) + " |")
    print("|---|" + "---|" * len(stages))
    for key, label in [*STAGES, ("at_the_caller_ms", "first audio heard by the caller")]:
        print(f"| {label} | " + " | ".join(str(m[key]) for m in stages.values()) + " |")
    png = _plot(stages, out)
    if png is not None:
        print(f"plot: {png}")


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--caller", help='a voice of benchmarks/callers.py, e.g. "kokoro:bf_emma"')
    who.add_argument("--split", choices=["held-back", "tuning"], help="a voice of the set per run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sip_latency.json")
    a = p.parse_args()
    asyncio.run(main(a.runs, a.out, a.caller, a.split))
