"""Load and soak: real phone calls placed with SIPp against `python -m worker dev --sip`.

For each concurrency N, SIPp places N simultaneous calls (the caller waits out the greeting,
says a line as mu-law RTP, waits for the reply, hangs up). The script reports calls completed,
voice-to-voice P50/P95 from the worker's call records, and the worker's CPU and memory
(sampled every 0.5 s; its embedded LLM server counted separately). The soak places calls one
after another and reports memory growth from the first five calls to the last five, measured
between calls once each call's record has ended (and its peak during calls). With
``--remote-models`` the speech models run in their own servers (``plugins.kokoro.server``,
``plugins.faster_whisper.server``), so the worker's own CPU per call is visible.

    python benchmarks/load.py --concurrency 1,2,3,4 [--remote-models]
    python benchmarks/load.py --concurrency "" --soak 100      # -> results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins.net import free_port  # noqa: E402
from tests.sip_tools import caller_scenario, free_udp_port, run_sipp, wav_to_pcap  # noqa: E402
from worker import records  # noqa: E402

LINE = "Hi, what time do you open tomorrow?"


class Sampler(threading.Thread):
    """CPU (in cores) and RSS of the worker process, and of its children, every 0.5 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float, float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        self.proc.cpu_percent()
        kids: dict[int, psutil.Process] = {}
        while not self._halt.wait(0.5):
            try:
                cpu = self.proc.cpu_percent() / 100
                rss = self.proc.memory_info().rss / 2**20
                for c in self.proc.children(recursive=True):
                    if c.pid not in kids:
                        kids[c.pid] = c
                        c.cpu_percent()
                kcpu = sum(c.cpu_percent() / 100 for c in kids.values() if c.is_running())
                krss = sum(c.memory_info().rss for c in kids.values() if c.is_running()) / 2**20
            except psutil.Error:
                continue
            self.samples.append((cpu, rss, kcpu, krss))

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        if not self.samples:
            return {}
        cpu, rss, kcpu, krss = zip(*self.samples, strict=True)
        return {
            "worker_cpu_cores_mean": round(statistics.mean(cpu), 2),
            "worker_cpu_cores_p95": round(float(np.percentile(cpu, 95)), 2),
            "worker_rss_mb_max": round(max(rss), 1),
            "children_cpu_cores_mean": round(statistics.mean(kcpu), 2),
            "children_rss_mb_max": round(max(krss), 1),
        }


def start_worker(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    port = free_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "dev", "--sip", f"127.0.0.1:{port}", "--http",
         f"127.0.0.1:{free_port()}", "--data-dir", str(data), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "WORKER_SIP__MAX_CALLS": "64", **env},
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if "ready in" in line:
            return proc, ("127.0.0.1", port)
        if not line:
            raise SystemExit("the worker did not start")


def start_servers(data: Path) -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    kp, wp = free_udp_port(), free_udp_port()
    env = {**os.environ, "WORKER_DATA_DIR": str(data)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "plugins.kokoro.server", "--port", str(kp)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "plugins.faster_whisper.server", "--port",
                          str(wp)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    time.sleep(8)
    return procs, {"WORKER_TTS__SERVER_URL": f"http://127.0.0.1:{kp}",
                   "WORKER_STT__SERVER_URL": f"ws://127.0.0.1:{wp}"}  # fmt: skip


def v2v_of_new_calls(calls_dir: Path, seen: set[Path], n: int) -> tuple[list[float], int]:
    """Voice-to-voice of the calls that appeared since the last look, once they have ended
    (a call's record gets its end a moment after the BYE)."""
    deadline = time.monotonic() + 20
    while True:
        new = [p for p in records.iter_calls(calls_dir) if p not in seen]
        recs = {p: records.read_records(p) for p in new}
        ended = sum(any(r["type"] == "call_end" for r in rs) for rs in recs.values())
        if ended >= n or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    seen.update(new)
    values = [r["voice_to_voice_ms"] for rs in recs.values() for r in rs
              if r.get("role") == "agent" and r.get("voice_to_voice_ms")]  # fmt: skip
    return values, ended


def settled_rss(proc: psutil.Process) -> float:
    """The worker's memory between calls: once the last call's record has ended, the worker
    hands freed memory back; the median of a few samples a second later is what it keeps."""
    time.sleep(1.0)
    samples = []
    for _ in range(5):
        samples.append(proc.memory_info().rss / 2**20)
        time.sleep(0.1)
    return statistics.median(samples)


def main(levels: list[int], soak: int, remote: bool, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="load-"))
    data = tmp / "data"
    data.mkdir()
    src = Path(os.environ.get("WORKER_DATA_DIR") or Path.home() / ".local/share/voice-worker")
    (data / "models").symlink_to(src / "models", target_is_directory=True)
    wav = tmp / "line.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), LINE], check=True)
    speech_s = wav_to_pcap(wav, tmp / "line.pcap")
    servers: list[subprocess.Popen[bytes]] = []
    env: dict[str, str] = {}
    if remote:
        servers, env = start_servers(data)
    worker, target = start_worker(data, env)
    seen: set[Path] = set()
    results: dict[str, Any] = {"levels": [], "remote_models": remote}
    try:
        scenario = caller_scenario([("pause", 4000), ("play", tmp / "line.pcap"),
                                    ("pause", int(speech_s * 1000) + 7000)])  # fmt: skip
        for n in levels:
            sampler = Sampler(worker.pid)
            sampler.start()
            run = run_sipp(scenario, target, tmp, calls=n, rate=n, timeout=120)
            time.sleep(1.0)
            usage = sampler.stop()
            v2v, ended = v2v_of_new_calls(data / "calls", seen, n)
            ok = run.returncode == 0 and ended == n
            row = {
                "concurrency": n, "sipp_ok": run.returncode == 0, "calls_completed": ended,
                "replies": len(v2v),
                "v2v_p50_ms": round(float(np.percentile(v2v, 50)), 1) if v2v else None,
                "v2v_p95_ms": round(float(np.percentile(v2v, 95)), 1) if v2v else None,
                "all_completed": ok, **usage,
            }  # fmt: skip
            if usage:
                row["worker_cpu_per_call"] = round(usage["worker_cpu_cores_mean"] / n, 2)
            results["levels"].append(row)
            print(json.dumps(row), flush=True)
        if soak:
            short = caller_scenario([("pause", 3000), ("play", tmp / "line.pcap"),
                                     ("pause", int(speech_s * 1000) + 3500)])  # fmt: skip
            proc = psutil.Process(worker.pid)
            rss: list[float] = []
            done = 0
            sampler = Sampler(worker.pid)
            sampler.start()
            for i in range(soak):
                run = run_sipp(short, target, tmp, calls=1, rate=1, timeout=60)
                _, ended = v2v_of_new_calls(data / "calls", seen, 1)
                done += run.returncode == 0 and ended == 1
                rss.append(settled_rss(proc))
                if (i + 1) % 10 == 0:
                    print(f"soak: {i + 1}/{soak} calls, {done} completed, "
                          f"worker {rss[-1]:.0f} MB", flush=True)  # fmt: skip
            peak = sampler.stop().get("worker_rss_mb_max")
            first, last = statistics.mean(rss[:5]), statistics.mean(rss[-5:])
            results["soak"] = {
                "calls": soak, "completed": done, "rss_mb_first5": round(first, 1),
                "rss_mb_last5": round(last, 1), "growth_pct": round((last / first - 1) * 100, 1),
                "rss_mb_peak_during_calls": peak, "rss_mb_series": [round(x, 1) for x in rss],
            }  # fmt: skip
            print(json.dumps({k: v for k, v in results["soak"].items()
                              if k != "rss_mb_series"}), flush=True)  # fmt: skip
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        for s in servers:
            s.terminate()
    results["machine"] = {"cpus": os.cpu_count()}
    if levels:
        good = [r["concurrency"] for r in results["levels"]
                if r["all_completed"] and (r["v2v_p95_ms"] or 1e9) < 2000]  # fmt: skip
        results["largest_n_all_completed_p95_under_2s"] = max(good) if good else None
        print(f"largest N with every call completed and P95 < 2 s: "
              f"{results['largest_n_all_completed_p95_under_2s']}")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,2,3,4", help='"" for the soak alone')
    p.add_argument("--soak", type=int, default=0, help="sequential calls for the soak")
    p.add_argument("--remote-models", action="store_true")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    levels = [int(x) for x in a.concurrency.split(",") if x]
    name = "soak.json" if not levels else "load_remote.json" if a.remote_models else "load.json"
    out = a.out or ROOT / "benchmarks/results" / name
    main(levels, a.soak, a.remote_models, out)
