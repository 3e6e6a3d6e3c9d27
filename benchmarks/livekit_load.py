"""Benchmark: one LiveKit worker under 1..N concurrent calls (jobs as threads, shared models).

A real LiveKit server from `python -m infra.livekit`, `python -m worker dev` registered with
it, and N rtc-SDK callers at once, each saying the same lines and waiting for each reply.
Reported per N: voice-to-voice P50/P95, the worker's peak resident memory (its process tree,
the embedded LLM server included) and its mean CPU while the calls ran. The idle figure after
loading is what each extra process would cost if jobs ran as processes with their own models.

    python benchmarks/livekit_load.py [--calls 1 2 3 4] [--llm smollm2] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.livekit_latency import LINES, pct, rtc_call, speak, start_worker  # noqa: E402
from infra import livekit as stack  # noqa: E402
from plugins.net import free_port  # noqa: E402


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--llm", help="embedded model name (default: the default model)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/livekit_load.json")
    args = p.parse_args()
    conf = stack.StackConfig(port=free_port())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, stack.running(conf):
        tmpd = Path(tmp)
        lines = [speak(t, tmpd / f"l{i}.wav") for i, t in enumerate(LINES[:2])]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "WORKER_"))}
        env.update(conf.env(), WORKER_LIVEKIT__METRICS_PORT="0",
                   WORKER_LIVEKIT__HTTP_PORT=str(free_port()),
                   WORKER_MAX_CALLS=str(max(args.calls)))  # fmt: skip
        if args.llm:
            env["WORKER_LLM__EMBEDDED_MODEL"] = args.llm
        worker = start_worker(env, tmpd / "worker.log")
        try:
            ps = psutil.Process(worker.pid)
            time.sleep(2)
            idle_mb = tree_rss(ps) / 2**20
            print(f"worker loaded: {idle_mb:.0f} MB resident", flush=True)
            for n in args.calls:
                peak, cpu, stop = [0], [], threading.Event()

                def sample(peak: list[int] = peak, cpu: list[float] = cpu,
                           stop: threading.Event = stop) -> None:  # fmt: skip
                    procs = [ps, *ps.children(recursive=True)]
                    for q in procs:
                        q.cpu_percent(None)
                    while not stop.wait(0.5):
                        peak[0] = max(peak[0], tree_rss(ps))
                        total = 0.0
                        for q in procs:
                            with contextlib.suppress(psutil.NoSuchProcess):
                                total += q.cpu_percent(None)
                        cpu.append(total)

                t = threading.Thread(target=sample, daemon=True)
                t.start()

                async def one(i: int, n: int = n) -> list[float] | None:
                    try:
                        return await rtc_call(conf, lines, 100 * n + i)
                    except TimeoutError:  # the agent never answered this caller: a figure too
                        return None

                async def calls(n: int = n) -> list[list[float] | None]:
                    return list(await asyncio.gather(*(one(i) for i in range(n))))

                got = asyncio.run(calls())
                v2v = [x for c in got if c is not None for x in c]
                stop.set()
                t.join()
                row = {"calls": n, "unanswered": sum(c is None for c in got),
                       "replies": len(v2v), "v2v_p50_ms": pct(v2v, 0.5),
                       "v2v_p95_ms": pct(v2v, 0.95), "peak_rss_mb": round(peak[0] / 2**20),
                       "cpu_percent_mean": round(sum(cpu) / max(1, len(cpu)))}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            worker.terminate()
            worker.wait(60)
    report = {
        "what": "one LiveKit worker, jobs as threads sharing one set of models",
        "server": f"livekit-server {stack.SERVER.version}",
        "llm": args.llm or "default",
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "idle_rss_mb": round(idle_mb),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
