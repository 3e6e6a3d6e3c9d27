"""Benchmark: voice-to-voice latency and where it goes, through every transport in one sitting.

The callers say the same four lines, each at real-time pace, and wait for each reply; the
agent's voice is detected at the caller with one energy threshold. Transports (``--transports``,
all by default), run by run in rotating order, so a drift in machine load hits them alike:
- ``sip``: a scripted phone dials the worker's SIP server on 127.0.0.1 (mu-law RTP over UDP);
- ``twilio``: the worker's ``/twilio/media`` WebSocket with base64 mu-law ``media`` events;
- ``in-process``: a loopback call at 8 kHz (no sockets, no codec), the chain itself;
- ``stock``: the same loopback call with the framework's stock turn handling
  (``livekit-defaults``): the baseline, in the same run;
- ``browser``: headless Chromium on the worker's own page, over WebRTC (Opus), its microphone
  fed by the benchmark (``browser_caller.py``);
- ``livekit-rtc`` / ``livekit-sip``: a real LiveKit server and LiveKit SIP on loopback
  (``python -m infra.livekit install`` first), a ``python -m worker dev`` registered with it,
  a caller in a room on the rtc SDK and a phone dialling LiveKit SIP.
The in-process transports share one set of loaded models; the LiveKit worker loads its own
(the same defaults). The browser and LiveKit need a network interface other than loopback
(WebRTC gathers no loopback candidates): the script re-runs itself in a private network
namespace with a TEST-NET-1 veth pair, as ``scripts/test.sh --offline`` does.

Voice-to-voice is the time from the caller's last sample leaving it to the first voiced audio
of the reply arriving at it; time to greeting from the call being answered (200 OK, the
stream's ``start``, the page connected, the room joined) to the greeting's first voiced audio.
The stage timeline puts each agent turn's record (``timings``) on the same clock, in ms after
the caller's last sample: the worker's end of speech (its estimate of the last voiced sample),
the VAD's end-of-speech event, the STT final, the end-of-turn decision, the first audio sent,
the first audio heard. The LLM's first token and the TTS's first audio are durations from
their requests, which speculation starts before the decision.

The caller is espeak-ng en-us unless ``--caller`` names a voice of ``callers.py``
("kokoro:bf_emma", "piper:joe", "espeak:en-gb:140"), or ``--split held-back`` (or ``tuning``)
takes a different voice of that set for every run (all transports of a run share it).

    python benchmarks/latency.py [--runs 3] [--transports sip,browser,...]
        [--caller VOICE | --split SET] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from plugins.audio import g711_decode, g711_encode, resample  # noqa: E402
from plugins.net import free_port  # noqa: E402
from telephony.loopback import LoopbackCall  # noqa: E402
from telephony.sip import SipServer  # noqa: E402
from tests.livekit_caller import RoomCaller  # noqa: E402
from tests.sip_tools import SipCaller  # noqa: E402
from worker import records  # noqa: E402
from worker.call import run_call  # noqa: E402
from worker.harness import RATE as HARNESS_RATE  # noqa: E402
from worker.harness import CallerVoice  # noqa: E402
from worker.local.server import LocalServer  # noqa: E402
from worker.models import Models, load_models  # noqa: E402
from worker.session import TurnProfile  # noqa: E402
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


def _cpu_times() -> tuple[int, int] | None:
    """All and idle CPU ticks so far, or None where there is no /proc (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return sum(fields), fields[3] + fields[4]  # all, idle + iowait


async def quiet_machine(limit: float = 120.0, idle: float = 0.8) -> None:
    """Wait until the CPUs have been mostly idle for a second (a worker that just started
    is still filling its caches; the previous call may still be closing), at most ``limit``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if (before := _cpu_times()) is None:
            return
        await asyncio.sleep(1.0)
        after = _cpu_times()
        assert after is not None
        if after[0] > before[0] and (after[1] - before[1]) / (after[0] - before[0]) >= idle:
            return
    print(f"warning: the machine stayed busy for {limit:.0f} s", file=sys.stderr)


@dataclass
class Result:
    """One transport's call: voice-to-voice per line, when each line ended at the caller,
    the time to greeting, and the barge-in pause (all ms but ``ends``)."""

    v2v: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    greeting: float | None = None
    barge_in: float | None = None
    skipped: str = ""
    receive_stats: dict[str, float] | None = None
    """The caller's own receive statistics, where it keeps them (the browser)."""


QUIET = 1.5
"""Seconds of agent silence that end a reply (a gap between two pieces of one reply on two
busy cores can pass a second; the next line must not barge in on it)."""
ASK = "Can you tell me what is on the menu tonight?"
"""Asked before the barge-in, for a reply long enough to interrupt."""
INTERRUPT = "Wait, stop."
INTERRUPT_AFTER = 1.0
"""Seconds of the reply the caller hears at least before interrupting it."""
STOPPED_GAP = 0.5
"""Silence at the caller after which the agent counts as having stopped."""


def _onset(pcm: np.ndarray, rate: int) -> float:
    """Seconds from the start of a rendered line to its first voiced 10 ms."""
    block = rate // 100
    for i in range(pcm.size // block):
        chunk = pcm[i * block : (i + 1) * block].astype(np.float64)
        if np.sqrt(np.mean(chunk**2)) > 300:
            return i / 100
    return 0.0


def _talking(voiced_at: list[float], not_before: float) -> bool:
    """Whether the agent's voice has reached the caller without a gap over 60 ms for the
    last 200 ms, and it is at least ``not_before``."""
    now = time.time()
    if now < not_before or not voiced_at or now - voiced_at[-1] > 0.06:
        return False
    recent = [t for t in voiced_at[-100:] if t > now - 0.2]
    return (
        bool(recent)
        and recent[0] - (now - 0.2) < 0.06
        and all(b - a <= 0.06 for a, b in itertools.pairwise(recent))
    )


async def _until_reply(caller: Any, after: float, limit: float = 20.0) -> float | None:
    """The first voiced audio at the caller after ``after`` (time.time()), or None."""
    deadline = time.time() + limit
    while time.time() < deadline:
        if (first := next((t for t in caller.voiced_at if t > after), None)) is not None:
            return float(first)
        await caller.silence(0.02)
    return None


async def _converse(caller: Any, voice: Voice, answered: float, rate: int = 8000) -> Result:
    """Greeting, then each line at ``rate`` (8 kHz is all a phone carries), then a question
    whose reply the caller interrupts: the barge-in pause is from the interruption's first
    voiced sample leaving the caller to the agent's last voiced audio before it fell silent."""
    await caller.wait_agent_quiet(quiet=QUIET)
    out = Result(greeting=(caller.voiced_at[0] - answered) * 1000 if caller.voiced_at else None)
    for line in LINES:
        ended = await caller.stream(resample(voice(line), HARNESS_RATE, rate))
        first = await _until_reply(caller, ended)
        if first is not None:
            out.v2v.append((first - ended) * 1000)
            out.ends.append(ended)
            await caller.wait_agent_quiet(quiet=QUIET)
    asked = await caller.stream(resample(voice(ASK), HARNESS_RATE, rate))
    if (first := await _until_reply(caller, asked)) is None:
        out.skipped = "no reply to the question"
        return out
    # interrupt mid-word: the reply under way a while, and voiced without a gap just now
    # (between a cached opener and the next piece there can be a silent moment)
    deadline = first + 10
    while not _talking(caller.voiced_at, first + INTERRUPT_AFTER):
        if time.time() > deadline:
            out.skipped = "the reply ended before it could be interrupted"
            return out
        await caller.silence(0.01)
    stop = resample(voice(INTERRUPT), HARNESS_RATE, rate)
    onset = time.time() + _onset(stop, rate)
    await caller.stream(stop)
    deadline = time.time() + 10
    while time.time() < deadline:
        later = [t for t in caller.voiced_at if t > onset]
        if not later:
            out.skipped = "the reply was over before the interruption began"
            break
        if time.time() - later[-1] > STOPPED_GAP:
            out.barge_in = (later[-1] - onset) * 1000
            break
        await caller.silence(0.02)
    with contextlib.suppress(TimeoutError):
        await caller.wait_agent_quiet(quiet=QUIET)  # its reply to "Wait, stop."
    return out


async def _sip_run(models: Models, local: LocalServer, voice: Voice) -> Result:
    cfg = models.settings.sip.model_copy(update={"listen": "127.0.0.1:0"})
    server = SipServer(cfg, on_call=local.run_phone_call)
    await server.start()
    caller = SipCaller(server.address)
    try:
        await asyncio.to_thread(caller.dial)  # returns on the 200 OK
        result = await _converse(caller, voice, time.time())
        await asyncio.to_thread(caller.hang_up)
    finally:
        caller.close()
        await server.stop()
    return result


async def _twilio_run(port: int, voice: Voice) -> Result:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/twilio/media")
        caller = TwilioCaller(ws)
        receiver = asyncio.create_task(caller.receive())
        try:
            await caller.start()
            result = await _converse(caller, voice, time.time())
            await ws.send_json({"event": "stop", "streamSid": caller.STREAM, "stop": {}})
            await asyncio.wait_for(receiver, 10)
        finally:
            receiver.cancel()
            await ws.close()
    return result


async def _loopback_run(models: Models, voice: Voice, stock: bool = False) -> Result:
    call = LoopbackCall(records.new_call_id(), input_rate=8000, output_rate=8000)
    caller = LoopbackCaller(call)
    answered = time.time()
    turns: TurnProfile = "livekit-defaults" if stock else "default"
    session = asyncio.create_task(run_call(models, call, profile="telephony", turn_profile=turns))
    try:
        result = await _converse(caller, voice, answered)
    finally:
        call.mark_ended("caller_hangup")
        await session
        await call.close()
    return result


async def _browser_run(port: int, voice: Voice) -> Result:
    from browser_caller import BrowserCaller

    async with BrowserCaller(f"http://127.0.0.1:{port}/?autoconnect=1", rate=16000) as caller:
        result = await _converse(caller, voice, caller.connected_at, rate=16000)
    result.receive_stats = caller.receive_stats
    return result


class LiveKitSide:
    """A LiveKit server and LiveKit SIP on loopback with a ``python -m worker dev`` registered
    (what ``livekit_latency.py`` runs), for as long as the benchmark."""

    @contextlib.contextmanager
    def running(self) -> Iterator[LiveKitSide]:
        from livekit_latency import SPEC, start_worker

        from infra import livekit as stack

        self.conf = stack.StackConfig(port=free_port(), sip=True, sip_port=free_port())
        with tempfile.TemporaryDirectory() as tmp, stack.running(self.conf):
            spec = Path(tmp) / "sip.yaml"
            spec.write_text(SPEC)  # the trunk and dispatch rule livekit_latency.py uses
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "WORKER_"))}
            env.update(self.conf.env())
            subprocess.run([sys.executable, "-m", "worker", "provision", str(spec)], env=env,
                           check=True, capture_output=True)  # fmt: skip
            env.update({"WORKER_LIVEKIT__METRICS_PORT": "0",
                        "WORKER_LIVEKIT__HTTP_PORT": str(free_port())})  # fmt: skip
            print("starting the LiveKit worker (it loads its own models)", file=sys.stderr)
            worker = start_worker(env, Path(tmp) / "worker.log")
            try:
                yield self
            finally:
                worker.terminate()
                worker.wait(60)

    async def rtc(self, voice: Voice, n: int) -> Result:
        from pydantic import SecretStr

        from worker.settings import Settings
        from worker.web.server import mint_token

        s = Settings()
        s.livekit.url, s.livekit.api_key = self.conf.url, self.conf.api_key
        s.livekit.api_secret = SecretStr(self.conf.api_secret)
        caller = RoomAdapter(self.conf.url, mint_token(s, f"bench-rtc-{n}", f"caller-{n}"))
        await caller.join()
        try:
            return await _converse(caller, voice, time.time(), rate=48000)
        finally:
            await caller.leave()

    async def sip(self, voice: Voice) -> Result:
        phone = SipCaller(("127.0.0.1", self.conf.sip_port), user="+15551230000")
        try:
            await asyncio.to_thread(phone.dial)
            result = await _converse(phone, voice, time.time())
            await asyncio.to_thread(phone.hang_up)
        finally:
            phone.close()
        return result


class RoomAdapter(RoomCaller):
    """The rtc SDK caller with the SIP caller's interface and energy detector."""

    async def _listen(self, track: Any) -> None:
        from livekit import rtc

        async for ev in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            block = np.frombuffer(ev.frame.data, np.int16).astype(np.float64)
            if float(np.sqrt(np.mean(block**2))) > SipCaller.VOICED_RMS:
                self.voiced_at.append(time.time())

    async def stream(self, pcm: np.ndarray) -> float:
        self.said_until = 0.0
        self.say(pcm)
        await self.until_said()
        return self.said_until

    async def silence(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_agent_quiet(self, quiet: float = 0.8, limit: float = 30.0) -> None:
        if not await self.until_quiet(quiet, limit):
            raise TimeoutError("the agent never went quiet")


TRANSPORTS = {
    "sip": "SIP/RTP",
    "twilio": "Twilio Media Streams",
    "in-process": "in-process",
    "stock": "in-process, stock turn handling",
    "browser": "browser (WebRTC)",
    "livekit-rtc": "LiveKit room (rtc SDK)",
    "livekit-sip": "LiveKit SIP",
}
NEEDS_NETWORK = {"browser", "livekit-rtc", "livekit-sip"}

TIMELINE = [
    ("speech_end", "worker's end of speech (its estimate of the last voiced sample)"),
    ("vad_end", "VAD end of speech (its event)"),
    ("stt_final", "STT final"),
    ("end_of_turn", "end-of-turn decision"),
    ("first_audio_sent", "first audio sent"),
    ("at_the_caller", "first audio heard by the caller"),
]
"""Points on one clock, ms after the caller's last sample left it."""
DURATIONS = [
    ("llm_first_token_ms", "LLM first token after its request"),
    ("tts_first_audio_ms", "TTS first audio after its request"),
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


def _timeline(result: Result, timings: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each answered line's stages on the caller's clock: the record whose speech end lies
    nearest the line's end (within 2 s) is that line's turn."""
    rows = []
    for ended, v2v in zip(result.ends, result.v2v, strict=True):
        near = [t for t in timings if t.get("caller_speech_end")
                and abs(t["caller_speech_end"] - ended) < 2.0]  # fmt: skip
        if not near:
            continue
        t = min(near, key=lambda t: abs(t["caller_speech_end"] - ended))
        end = (t["caller_speech_end"] - ended) * 1000
        row = {"speech_end": end, "at_the_caller": v2v}
        for key, src in (("vad_end", "vad_end_ms"), ("stt_final", "stt_final_ms"),
                         ("end_of_turn", "end_of_turn_ms")):  # fmt: skip
            if t.get(src) is not None:
                row[key] = end + t[src]
        if t.get("first_audio_out"):
            row["first_audio_sent"] = (t["first_audio_out"] - ended) * 1000
        for key, _ in DURATIONS:
            if t.get(key) is not None:
                row[key] = t[key]
        rows.append(row)
    return rows


def _medians(rows: list[dict[str, float]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, _ in [*TIMELINE, *DURATIONS]:
        vals = [r[key] for r in rows if key in r]
        out[key] = round(statistics.median(vals), 1) if vals else None
    vad = [r["stt_final"] - r["vad_end"] for r in rows if "stt_final" in r and "vad_end" in r]
    out["stt_final_after_vad_end"] = round(statistics.median(vals), 1) if (vals := vad) else None
    return out


def _plot(stages: dict[str, dict[str, Any]], out: Path, title: str) -> Path | None:
    """A PNG of the stage timeline per transport, when matplotlib (extra `bench`) is there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.55 * len(stages)))
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    names = list(stages)
    labelled: set[str] = set()
    colour = {key: colours[i] for i, (key, _) in enumerate(TIMELINE)}
    label = dict(TIMELINE)
    for y, name in enumerate(names):
        # in time order: the stock VAD's event, for one, comes after the STT final
        med = stages[name]
        points = sorted((med[key], key) for key, _ in TIMELINE if med.get(key) is not None)
        prev = min(0.0, points[0][0]) if points else 0.0
        for at, key in points:
            ax.barh(y, at - prev, left=prev, color=colour[key], edgecolor="white",
                    label=None if key in labelled else label[key])  # fmt: skip
            labelled.add(key)
            prev = at
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("median ms after the caller's last sample")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
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
    from callers import Corpus

    corpus = Corpus.load()
    if split is not None:
        pool = corpus.voices(split)  # type: ignore[arg-type]
        names = [pool[(i * 7) % len(pool)] for i in range(runs)]  # spread over the set
    else:
        names = [name or ""] * runs
    out: list[tuple[Voice, str]] = []
    for n in names:
        rendered = {line: corpus.render(line, n, "16k") for line in [*LINES, ASK, INTERRUPT]}
        out.append((rendered.__getitem__, n))
    return out


async def _one_call(
    kind: str,
    models: Models,
    local: LocalServer,
    port: int,
    livekit: LiveKitSide,
    voice: Voice,
    run: int,
) -> Result:
    if kind == "sip":
        return await _sip_run(models, local, voice)
    if kind == "twilio":
        return await _twilio_run(port, voice)
    if kind in ("in-process", "stock"):
        return await _loopback_run(models, voice, stock=kind == "stock")
    if kind == "browser":
        return await _browser_run(port, voice)
    if kind == "livekit-rtc":
        return await livekit.rtc(voice, run)
    return await livekit.sip(voice)


async def main(runs: int, out: Path, kinds: list[str], caller: str | None = None,
               split: str | None = None) -> None:  # fmt: skip
    settings = load_settings()
    models = await load_models(settings)
    local = LocalServer(models)
    port = free_port()
    await local.start("127.0.0.1", port)  # the page and Twilio's WebSocket
    callers = _callers(caller, split, runs)
    results: dict[str, list[Result]] = {k: [] for k in kinds}
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    per_run: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.time()
    livekit = LiveKitSide()
    try:
        with (
            livekit.running()
            if {"livekit-rtc", "livekit-sip"} & set(kinds)
            else (contextlib.nullcontext())
        ):
            for run in range(runs):
                voice, caller_name = callers[run]
                order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
                for kind in order:
                    await quiet_machine()
                    before = set(settings.calls_dir.glob("*.jsonl"))
                    try:
                        r = await _one_call(kind, models, local, port, livekit, voice, run)
                    except Exception as e:  # one transport's failure is reported, not fatal
                        failures.append(f"run {run + 1} {kind}: {type(e).__name__}: {e}")
                        print(f"run {run + 1}/{runs} {kind} FAILED: {e!r}", file=sys.stderr)
                        continue
                    await asyncio.sleep(1.0)  # the record's last lines reach the disk
                    results[kind].append(r)
                    rows[kind].extend(_timeline(r, _record_timings(settings.calls_dir, before)))
                    per_run.append(
                        {"run": run, "transport": kind, "caller": caller_name,
                         "voice_to_voice_ms": r.v2v, "time_to_greeting_ms": r.greeting,
                         "barge_in_pause_ms": r.barge_in, "receive_stats": r.receive_stats}
                    )  # fmt: skip
                    print(f"run {run + 1}/{runs} {kind} ({caller_name}): "
                          f"{[round(x) for x in r.v2v]} ms, greeting "
                          f"{r.greeting and round(r.greeting)} ms, barge-in pause "
                          f"{r.barge_in and round(r.barge_in)} ms {r.skipped}",
                          file=sys.stderr)  # fmt: skip
        opened = list(getattr(models.tts, "openings", [0, 0]))
    finally:
        await local.stop()
        await models.aclose()
    summaries: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        summaries[kind] = _summary([x for r in results[kind] for x in r.v2v])
        g = [r.greeting for r in results[kind] if r.greeting is not None]
        summaries[kind]["time_to_greeting_p50_ms"] = round(statistics.median(g), 1) if g else None
        b = [r.barge_in for r in results[kind] if r.barge_in is not None]
        summaries[kind]["barge_in_pause_p50_ms"] = round(statistics.median(b), 1) if b else None
        summaries[kind]["barge_ins_measured"] = len(b)
        jb = [r.receive_stats["jitter_buffer_ms"] for r in results[kind] if r.receive_stats]
        if jb:
            summaries[kind]["caller_jitter_buffer_ms"] = round(statistics.median(jb), 1)
    stages = {TRANSPORTS[k]: _medians(rows[k]) for k in kinds}
    ratio = None
    if summaries.get("stock", {}).get("p50_ms") and summaries.get("in-process", {}).get("p50_ms"):
        ratio = round(summaries["stock"]["p50_ms"] / summaries["in-process"]["p50_ms"], 2)
    doc = {
        "benchmark": "latency",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "lines": LINES,
        "caller": split or caller or "espeak:en-us",
        "callers": sorted({c for _, c in callers}),
        "voice_to_voice": {TRANSPORTS[k]: summaries[k] for k in kinds},
        "stock_over_ours_p50_in_process": ratio,
        "stage_medians_ms": stages,
        "replies_opened_from_the_piece_cache": {"replies": opened[0], "from_cache": opened[1]},
        "per_run": per_run,
        "failed_calls": failures,
        "turns": {TRANSPORTS[k]: rows[k] for k in kinds},
    }
    _write(out, doc)
    print("| transport | turns | voice-to-voice P50 | P95 | time to greeting P50 "
          "| barge-in pause P50 (n) |\n|---|---|---|---|---|---|")  # fmt: skip
    for kind in kinds:
        s = summaries[kind]
        print(f"| {TRANSPORTS[kind]} | {s['turns']} | {s['p50_ms']} ms | {s['p95_ms']} ms "
              f"| {s['time_to_greeting_p50_ms']} ms | {s['barge_in_pause_p50_ms']} ms "
              f"({s['barge_ins_measured']}) |")  # fmt: skip
    if ratio is not None:
        print(f"\nstock / ours, in-process P50: {ratio}")
    for kind in kinds:
        if (held := summaries[kind].get("caller_jitter_buffer_ms")) is not None:
            print(f"{TRANSPORTS[kind]}: the caller's jitter buffer held the agent's audio "
                  f"{held} ms on average (median over calls)")  # fmt: skip
    print(f"replies whose first piece came from the piece cache: {opened[1]} of {opened[0]}")
    print("\n| median ms after the caller's last sample | " + " | ".join(stages) + " |")
    print("|---|" + "---|" * len(stages))
    labels = [*TIMELINE, ("stt_final_after_vad_end", "STT final after the VAD's event"),
              *DURATIONS]  # fmt: skip
    for key, label in labels:
        print(f"| {label} | " + " | ".join(str(m[key]) for m in stages.values()) + " |")
    for failure in failures:
        print(f"failed: {failure}")
    print(f"\nwritten to {out}")
    title = f"Where voice-to-voice goes ({split or caller or 'espeak:en-us'}, {runs} runs)"
    if (png := _plot(stages, out, title)) is not None:
        print(f"plot: {png}")


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


def _in_network_namespace(argv: list[str]) -> int | None:
    """Re-run this script in a private network namespace with one veth pair (TEST-NET-1), so
    WebRTC has a non-loopback interface and nothing leaves the machine; None if it cannot."""
    if os.environ.get("BENCH_NETNS") or shutil.which("unshare") is None:
        return None
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        return None
    script = ("ip link set lo up && ip link add vt0 type veth peer name vt1 && "
              "ip addr add 192.0.2.1/24 dev vt0 && ip link set vt0 up && ip link set vt1 up "
              '&& exec "$@"')  # fmt: skip
    env = {**os.environ, "BENCH_NETNS": "1"}
    cmd = ["unshare", "-rn", "sh", "-c", script, "sh", sys.executable, *argv]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help=f"comma-separated, of: {', '.join(TRANSPORTS)}")  # fmt: skip
    who = p.add_mutually_exclusive_group()
    who.add_argument("--caller", help='a voice of benchmarks/callers.py, e.g. "kokoro:bf_emma"')
    who.add_argument("--split", choices=["held-back", "tuning"], help="a voice of the set per run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latency.json")
    a = p.parse_args()
    chosen = [k.strip() for k in a.transports.split(",") if k.strip()]
    if unknown := [k for k in chosen if k not in TRANSPORTS]:
        p.error(f"unknown transport(s) {unknown}; choose from {', '.join(TRANSPORTS)}")
    if NEEDS_NETWORK & set(chosen) and not os.environ.get("BENCH_NETNS"):
        rc = _in_network_namespace(sys.argv)
        if rc is not None:
            sys.exit(rc)
        print("warning: no network namespace here; WebRTC may not connect", file=sys.stderr)
    asyncio.run(main(a.runs, a.out, chosen, a.caller, a.split))
