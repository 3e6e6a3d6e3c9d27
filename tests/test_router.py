"""The consistent-hash router: the ring alone, then nodes, heartbeats, replicas and sticky
sessions in a real redis-server the tests start on a free port."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from infra.router import HashRing, NodeInfo, NodeRegistration, NoNodeError, Router, simulate

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
