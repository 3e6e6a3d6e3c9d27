"""The consistent-hash router: the ring alone, then nodes, heartbeats, replicas and sticky
sessions in a real redis-server the tests start on a free port."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web

from infra.router import (
    HashRing,
    NodeInfo,
    NodeRegistration,
    NoNodeError,
    PoolConfig,
    Router,
    SessionRoute,
    simulate,
    simulate_pool,
)
from infra.router.node import NodeAgent, NodeAgentConfig
from plugins.net import free_port

from .redis_server import redis_server

NODES = [f"gpu-{i}" for i in range(5)]


def test_load_per_node_is_within_ten_percent_of_the_mean() -> None:
    ring = HashRing(NODES, vnodes=100)
    counts = Counter(ring.lookup(f"voice-{k}")[0] for k in range(10_000))
    mean = 10_000 / 5
    assert set(counts) == set(NODES)
    assert all(abs(c - mean) / mean <= 0.10 for c in counts.values()), counts


def test_removing_a_node_moves_only_its_keys() -> None:
    before = HashRing(NODES, vnodes=100)
    after = HashRing(NODES[1:], vnodes=100)
    keys = [f"voice-{k}" for k in range(10_000)]
    moved = [k for k in keys if before.lookup(k)[0] != after.lookup(k)[0]]
    assert len(moved) / len(keys) <= 0.25
    assert all(before.lookup(k)[0] == "gpu-0" for k in moved)
    grown = HashRing([*NODES, "gpu-5"], vnodes=100)
    moved_on_add = [k for k in keys if before.lookup(k)[0] != grown.lookup(k)[0]]
    assert all(grown.lookup(k)[0] == "gpu-5" for k in moved_on_add)


def test_ring_cli_prints_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "infra.router", "ring", "--nodes", "5", "--vnodes", "100",
         "--keys", "10000", "--remove", "1", "--json"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    out = json.loads(proc.stdout)
    assert out == {**out, **simulate(5, 100, 10_000, remove=1)}
    assert out["load"]["max_deviation"] <= 0.10
    assert out["moved_fraction"] <= 0.25 and out["moved_only_from_removed_or_to_added"]


@pytest_asyncio.fixture
async def r(tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    with redis_server(tmp_path) as url:
        client = aioredis.from_url(url)
        yield client
        await client.aclose()


async def _register(r: aioredis.Redis, *ids: str, ttl: float = 10.0,
                    voices: list[str] | None = None) -> list[NodeRegistration]:  # fmt: skip
    regs = [NodeRegistration(r, NodeInfo(i, f"http://{i}:8000/v1", ["orpheus-3b"], voices or []),
                             ttl=ttl) for i in ids]  # fmt: skip
    for reg in regs:
        await reg.start()
    return regs


async def test_sticky_sessions_and_failover_when_a_heartbeat_lapses(r: aioredis.Redis) -> None:
    regs = await _register(r, "gpu-a", "gpu-b", "gpu-c", ttl=1.0)
    router = Router(r, cache_s=0)
    await router.set_replicas("tara", 3)  # sessions spread over all three nodes
    first = {}
    for s in range(30):
        first[s] = (await router.lookup("tara", f"call-{s}", model="orpheus-3b")).id
    assert len(set(first.values())) == 3
    for s, node in first.items():  # sticky while the node lives
        assert (await router.lookup("tara", f"call-{s}")).id == node
    dead = first[0]
    await next(g for g in regs if g.info.id == dead).stop(deregister=False)  # heartbeat stops
    await asyncio.sleep(1.5)  # ... and its TTL lapses
    assert dead not in await router.live_nodes(fresh=True)
    for s, node in first.items():
        now = (await router.lookup("tara", f"call-{s}")).id
        assert now != dead
        if node != dead:
            assert now == node, "sessions on live nodes stay put"
    for g in regs:
        await g.stop()
    with pytest.raises(NoNodeError):
        await router.lookup("tara", "call-x")


async def test_replicated_voice_spreads_sessions_and_busy_voices_grow(r: aioredis.Redis) -> None:
    regs = await _register(r, *NODES)
    router = Router(r, cache_s=0, grow_above=50, max_replicas=3)
    await router.set_replicas("leo", 3)
    placed = [n.id for n in await router.placement("leo")]
    assert len(set(placed)) == 3
    seen = Counter([(await router.lookup("leo", f"s{i}")).id for i in range(300)])
    assert set(seen) == set(placed) and min(seen.values()) >= 300 / 3 * 0.6, seen
    # a voice without replicas lives on one node until it gets busy
    assert await router.replica_count("mia") == 1
    for i in range(120):
        await router.lookup("mia", f"m{i}")
    assert await router.replica_count("mia") == 3  # grew once per 50 requests, capped at 3
    for g in regs:
        await g.stop()


async def test_nodes_holding_a_voice_are_preferred(r: aioredis.Redis) -> None:
    regs = await _register(r, "gpu-a", "gpu-b")
    regs += await _register(r, "gpu-lora", voices=["custom-anna"])
    router = Router(r, cache_s=0)
    assert (await router.lookup("custom-anna", "s1")).id == "gpu-lora"
    assert (await router.lookup("custom-anna")).url == "http://gpu-lora:8000/v1"
    for g in regs:
        await g.stop()


async def test_lookup_is_bounded_when_redis_hangs_and_falls_back_to_the_default() -> None:
    """A Redis that accepts connections and never answers (a hung server or a black-holed
    network): the lookup gives up at its bound and the default node answers."""
    hung: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=5,
                          socket_timeout=30)  # fmt: skip
    counted: list[str] = []
    route = SessionRoute(Router(r), "call-1", default_url="http://gpu-default:8000/v1",
                         timeout=0.3, on_fallback=counted.append)  # fmt: skip
    started = time.monotonic()
    try:
        assert await route("tara") == "http://gpu-default:8000/v1"
        connections = len(hung)
        other = SessionRoute(route.router, "call-3", default_url="http://gpu-default:8000/v1",
                             timeout=0.3, on_fallback=counted.append)  # fmt: skip
        assert await other("tara") == "http://gpu-default:8000/v1"
        assert len(hung) == connections, "during the outage no lookup waits on Redis again"
    finally:
        server.close()
        for w in hung:
            w.close()
        await r.aclose()
    assert hung, "the lookup did reach the hung Redis"
    assert counted == ["redis", "redis"]
    assert time.monotonic() - started < 10.0, "bounded by the lookup timeout, not the socket's"
    without_default = SessionRoute(Router(aioredis.from_url(f"redis://127.0.0.1:{free_port()}")),
                                   "call-2", timeout=0.3)  # fmt: skip
    with pytest.raises(NoNodeError):  # no default: the plugin turns this into the apology
        await without_default("tara")
    await without_default.router.r.aclose()


class FakeVLLM:
    """A scripted vLLM: /v1/models, the runtime LoRA API and /metrics (fast; the agent
    against real vLLM servers is in test_vllm_router.py)."""

    def __init__(self) -> None:
        self.loras: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def start(self) -> None:
        async def models(_: web.Request) -> web.Response:
            data = [{"id": "orpheus-3b", "parent": None}]
            data += [{"id": v, "parent": "orpheus-3b"} for v in self.loras]
            return web.json_response({"data": data})

        async def load(request: web.Request) -> web.Response:
            self.loras.append((await request.json())["lora_name"])
            return web.Response(text="ok")

        async def unload(request: web.Request) -> web.Response:
            self.loras.remove((await request.json())["lora_name"])
            return web.Response(text="ok")

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text='vllm:num_requests_running{engine="0"} 0.0\n')

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/load_lora_adapter", load)
        app.router.add_post("/v1/unload_lora_adapter", unload)
        app.router.add_get("/metrics", metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def test_node_agent_follows_its_server_and_loads_what_the_ring_asks(
    r: aioredis.Redis, tmp_path: Path
) -> None:
    for v in ("anna", "bob", "carol"):
        (tmp_path / "adapters" / v).mkdir(parents=True)
        (tmp_path / "adapters" / v / "adapter_config.json").write_text("{}")
    vllm = FakeVLLM()
    await vllm.start()
    cfg = NodeAgentConfig(vllm=f"http://127.0.0.1:{vllm.port}", node_id="gpu-0",
                          adapters=tmp_path / "adapters", ttl=0.6, max_loras=2)  # fmt: skip
    agent = NodeAgent(cfg, r)
    task = asyncio.create_task(agent.run())
    router = Router(r, cache_s=0)

    async def until(check: Any, what: str) -> None:
        for _ in range(100):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(what)

    async def listed() -> bool:
        return "gpu-0" in await router.live_nodes(fresh=True)

    try:
        await until(listed, "registered")
        assert await router.base_of("carol") == "orpheus-3b", "the adapter folder is catalogued"
        got = await router.route("anna", "s1")  # nobody holds anna: its node loads it
        assert got.loading and got.node.id == "gpu-0"
        assert "anna" in (await router.wait_loaded("gpu-0", "anna", 10)).voices
        await r.zadd("router:used:gpu-0", {"anna": 1.0})
        for v in ("bob", "carol"):
            await router.request_load("gpu-0", v)
            await router.wait_loaded("gpu-0", v, 10)
        assert sorted(vllm.loras) == ["bob", "carol"], "anna, the coldest, made room"
        await vllm.stop()  # the server goes down: the node leaves the ring

        async def gone() -> bool:
            return not await listed()

        await until(gone, "left the ring with its server")
        await vllm.start()  # back (empty): the node returns
        await until(listed, "returned with its server")
        assert (await router.node("gpu-0")) is not None
    finally:
        agent.stopping.set()
        await asyncio.wait_for(task, 30)
        await vllm.stop()
    assert not await listed(), "deregistered on stop"


def test_pool_simulation_cli_reports_spread_loads_and_moves() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "infra.router", "simulate", "--nodes", "6", "--voices", "200",
         "--hours", "4", "--churn-per-hour", "2", "--max-loras", "8", "--json"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    out = json.loads(proc.stdout)
    assert out["node_losses"] >= 1
    assert out["calls_moved_per_loss_mean"] > 0, "a lost node's calls move"
    assert out["calls_moved_from_other_nodes"] == 0, "and no other call does"
    assert len(out["per_node_calls_mean"]) == 6 and out["lora_loads_total"] > 0
    # more adapter room per node: fewer loads (same seed, same callers)
    roomy = simulate_pool(PoolConfig(**{**out["config"], "max_loras": 64}))
    assert roomy["lora_loads_per_hour"] < out["lora_loads_per_hour"]
    # no replicas: the most popular voice piles onto one node
    flat = simulate_pool(PoolConfig(**{**out["config"], "max_replicas": 1}))
    assert flat["load_spread_max_over_mean"] > out["load_spread_max_over_mean"]


async def test_a_draining_node_keeps_its_sessions_and_takes_no_new_ones(r: aioredis.Redis) -> None:
    regs = await _register(r, "gpu-a", "gpu-b")
    router = Router(r, cache_s=0)
    on_a = [s for s in (f"call-{i}" for i in range(40))
            if (await router.lookup("orpheus-3b", s)).id == "gpu-a"]  # fmt: skip
    assert on_a, "the base model's sessions spread over both nodes"
    regs[0].info.draining = True
    await regs[0].beat()
    assert all([(await router.lookup("orpheus-3b", s)).id == "gpu-a" for s in on_a]), (
        "pinned sessions finish where they are"
    )
    new = {(await router.lookup("orpheus-3b", f"new-{i}")).id for i in range(40)}
    assert new == {"gpu-b"}, "new sessions avoid the draining node"
    for g in regs:
        await g.stop()
