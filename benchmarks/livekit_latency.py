"""Benchmark: voice-to-voice latency through a real LiveKit server and real LiveKit SIP.

`python -m infra.livekit` runs the server and SIP on loopback; `python -m worker dev` (default
models unless --llm is given) registers with it. Two callers alternate, call by call, saying
the same lines spoken by espeak-ng at real-time pace and waiting for each reply:
- `livekit-rtc`: the `livekit` rtc SDK in a room (48 kHz Opus over WebRTC), the way a web
  visitor arrives;
- `livekit-sip`: a scripted phone (mu-law RTP over UDP) dialling LiveKit SIP, which bridges
  it into a room: SIP, G.711, the SIP service's own WebRTC leg, then the agent.
Voice-to-voice is from the caller's last frame of a line leaving to the first voiced frame of
the reply arriving at the caller. Also reported: the INVITE-to-200 time of each phone call
and the time to greeting (from the rtc caller having joined the room, or from the phone's
200 OK, to the greeting's first voiced frame at the caller).

    python benchmarks/livekit_latency.py [--runs 3] [--llm smollm2] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra import livekit as stack  # noqa: E402
from plugins.audio import read_wav, resample  # noqa: E402
from plugins.net import free_port  # noqa: E402
from tests.livekit_caller import RoomCaller  # noqa: E402
from tests.sip_tools import SipCaller  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.web.server import mint_token  # noqa: E402


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m worker dev` against the LiveKit server in ``env``, once it has registered."""
    worker = subprocess.Popen([sys.executable, "-m", "worker", "dev"], env=env,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # fmt: skip
    while b"registered worker" not in log.read_bytes():
        if worker.poll() is not None:
            sys.exit("the worker did not start:\n" + log.read_text()[-2000:])
        time.sleep(0.2)
    return worker


LINES = [
    "Hi, what time do you open tomorrow?",
    "Do you have a vegetarian menu?",
    "Great, thank you very much.",
]
QUIET = 3.0
"""Seconds of agent silence that end a reply: on two busy cores a gap between two synthesised
pieces of one reply passed 1.5 s, and the next line then started over the reply."""
SPEC = """
agent_name: voice-agent
inbound_trunks:
  - {name: bench, numbers: ["+15551230000"], allowed_addresses: ["127.0.0.1/32"]}
dispatch_rules:
  - {name: bench-calls, type: individual, trunks: [bench], room_prefix: bench-}
"""


def speak(text: str, out: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True)
    pcm, rate = read_wav(out)
    return pcm if rate == 48000 else resample(pcm, rate, 48000)


async def rtc_call(
    conf: stack.StackConfig, lines: list[np.ndarray], n: int
) -> tuple[float | None, list[float]]:
    s = Settings()
    s.livekit.url, s.livekit.api_key = conf.url, conf.api_key
    from pydantic import SecretStr

    s.livekit.api_secret = SecretStr(conf.api_secret)
    caller = RoomCaller(conf.url, mint_token(s, f"bench-rtc-{n}", f"caller-{n}"))
    await caller.join()
    joined = time.time()
    out = []
    try:
        await caller.until_quiet(QUIET, 60)  # the greeting
        greeting = (caller.voiced_at[0] - joined) * 1000 if caller.voiced_at else None
        for pcm in lines:
            voiced = len(caller.voiced_at)
            caller.say(pcm)
            await caller.until_said()
            said = caller.said_until
            deadline = time.monotonic() + 60
            while (first := _first_after(caller.voiced_at[voiced:], said)) is None:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            if first is None:
                break
            out.append((first - said) * 1000)
            await caller.until_quiet(QUIET, 60)
            caller.said_until = 0.0
    finally:
        await caller.leave()
    return greeting, out


async def sip_call(
    conf: stack.StackConfig, lines: list[np.ndarray]
) -> tuple[float, float | None, list[float]]:
    phone = SipCaller(("127.0.0.1", conf.sip_port), user="+15551230000")
    out = []
    try:
        t = time.monotonic()
        await asyncio.to_thread(phone.dial)
        answered = (time.monotonic() - t) * 1000
        answered_at = time.time()
        await phone.wait_agent_quiet(quiet=QUIET, limit=60)
        greeting = (phone.voiced_at[0] - answered_at) * 1000 if phone.voiced_at else None
        for pcm in lines:
            voiced = len(phone.voiced_at)
            said = await phone.stream(resample(pcm, 48000, 8000))
            deadline = time.time() + 60
            while (first := _first_after(phone.voiced_at[voiced:], said)) is None:
                if time.time() > deadline:
                    break
                await phone.silence(0.02)
            if first is None:
                break
            out.append((first - said) * 1000)
            await phone.wait_agent_quiet(quiet=QUIET, limit=60)
        await asyncio.to_thread(phone.hang_up)
    finally:
        phone.close()
    return answered, greeting, out


def _first_after(times: list[float], t0: float) -> float | None:
    """The first voiced block after the caller finished (not the tail of the last reply)."""
    return next((t for t in times if t > t0), None)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))], 1) if xs else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="calls per transport")
    p.add_argument("--llm", help="embedded model name (default: the default model)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/livekit_latency.json")
    args = p.parse_args()
    conf = stack.StackConfig(port=free_port(), sip=True, sip_port=free_port())
    with tempfile.TemporaryDirectory() as tmp, stack.running(conf):
        tmpd = Path(tmp)
        lines = [speak(t, tmpd / f"l{i}.wav") for i, t in enumerate(LINES)]
        spec = tmpd / "sip.yaml"
        spec.write_text(SPEC)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "WORKER_"))}
        env.update(conf.env())
        subprocess.run([sys.executable, "-m", "worker", "provision", str(spec)], env=env,
                       check=True, capture_output=True)  # fmt: skip
        wenv = {**env, "WORKER_LIVEKIT__METRICS_PORT": "0",
                "WORKER_LIVEKIT__HTTP_PORT": str(free_port())}  # fmt: skip
        if args.llm:
            wenv["WORKER_LLM__EMBEDDED_MODEL"] = args.llm
        worker = start_worker(wenv, tmpd / "worker.log")
        try:
            results: dict[str, list[float]] = {"livekit-rtc": [], "livekit-sip": []}
            answers: list[float] = []
            greetings: dict[str, list[float]] = {"livekit-rtc": [], "livekit-sip": []}
            for n in range(args.runs):  # alternate, so load drifts hit both alike
                rtc_greeting, rtc_v2v = asyncio.run(rtc_call(conf, lines, n))
                results["livekit-rtc"] += rtc_v2v
                answered, sip_greeting, v2v = asyncio.run(sip_call(conf, lines))
                for name, g in (("livekit-rtc", rtc_greeting), ("livekit-sip", sip_greeting)):
                    if g is not None:
                        greetings[name].append(g)
                answers.append(answered)
                results["livekit-sip"] += v2v
                print(f"run {n + 1}: rtc {results['livekit-rtc'][-len(lines):]}, "
                      f"sip {v2v}, answered in {answered:.0f} ms, greeting rtc "
                      f"{rtc_greeting} / sip {sip_greeting} ms", flush=True)  # fmt: skip
        finally:
            worker.terminate()
            worker.wait(60)
    report: dict[str, Any] = {
        "what": "voice-to-voice ms through a real LiveKit server (rtc SDK) and LiveKit SIP",
        "server": f"livekit-server {stack.SERVER.version}, livekit-sip {stack.SIP.version}",
        "llm": args.llm or "default",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "runs": args.runs,
        "sip_answer_ms": {"p50": pct(answers, 0.5), "max": round(max(answers), 1)},
        # from the caller in the room (rtc) or the SIP 200 OK to the greeting's first voiced
        # frame at the caller
        "time_to_greeting_ms": {k: pct(v, 0.5) for k, v in greetings.items()},
    }
    for name, xs in results.items():
        report[name] = {"n": len(xs), "p50": pct(xs, 0.5), "p95": pct(xs, 0.95),
                        "median": round(statistics.median(xs), 1) if xs else None}  # fmt: skip
        print(f"{name}: P50 {pct(xs, 0.5)} ms, P95 {pct(xs, 0.95)} ms over {len(xs)} replies")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
