"""GPU nodes and voice routing in Redis.

A node registers a hash ``{prefix}:node:{id}`` (its URL, the base models and LoRA voices it
holds) with a TTL and renews it with a heartbeat; when the heartbeat lapses the key expires
and the node leaves the ring. A lookup by voice builds the ring over the live nodes that hold
the voice (or, when none holds it yet, that serve its base model and can load it), takes the
voice's replica count of nodes clockwise, and pins the session to one of them
(``{prefix}:session:{sid}``), chosen by the session's hash so sessions spread over the
replicas. A pinned session stays on its node while the node lives. Each lookup counts towards
the voice's request rate; above ``grow_above`` lookups a minute the voice gains a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .ring import HashRing, hash64

logger = logging.getLogger("infra.router")


class NoNodeError(LookupError):
    """No live node can serve the voice."""


@dataclass
class NodeInfo:
    id: str
    url: str
    models: list[str] = field(default_factory=list)
    voices: list[str] = field(default_factory=list)


class NodeRegistration:
    """A GPU node's presence in the ring: register, then heartbeat until stopped."""

    def __init__(
        self,
        r: aioredis.Redis,
        info: NodeInfo,
        *,
        prefix: str = "router",
        ttl: float = 10.0,
    ) -> None:
        self.r, self.info, self.prefix, self.ttl = r, info, prefix, ttl
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        key = f"{self.prefix}:node:{self.info.id}"
        async with self.r.pipeline(transaction=True) as p:
            p.hset(key, mapping={
                "url": self.info.url, "models": json.dumps(self.info.models),
                "voices": json.dumps(self.info.voices), "seen": f"{time.time():.3f}",
            })  # fmt: skip
            p.pexpire(key, int(self.ttl * 1000))
            p.sadd(f"{self.prefix}:nodes", self.info.id)
            await p.execute()

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.beat()
            except (aioredis.RedisError, OSError) as e:  # keep trying; the TTL decides
                logger.warning("heartbeat for %s failed: %s", self.info.id, e)

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop the heartbeat; ``deregister`` removes the node now instead of at TTL expiry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if deregister:
            await self.r.delete(f"{self.prefix}:node:{self.info.id}")
            await self.r.srem(f"{self.prefix}:nodes", self.info.id)


class Router:
    """Looks voices (and sessions) up to nodes; any number of workers share one Redis."""

    def __init__(
        self,
        r: aioredis.Redis,
        *,
        prefix: str = "router",
        vnodes: int = 100,
        replicas: int = 1,
        max_replicas: int = 4,
        grow_above: int = 600,
        session_ttl: float = 3600.0,
        cache_s: float = 1.0,
    ) -> None:
        self.r, self.prefix, self.vnodes = r, prefix, vnodes
        self.replicas, self.max_replicas = replicas, max_replicas
        self.grow_above, self.session_ttl, self.cache_s = grow_above, session_ttl, cache_s
        self._nodes: dict[str, NodeInfo] = {}
        self._nodes_at = 0.0
        self._rings: dict[tuple[str, ...], HashRing] = {}

    async def live_nodes(self, *, fresh: bool = False) -> dict[str, NodeInfo]:
        if not fresh and time.monotonic() - self._nodes_at < self.cache_s:
            return self._nodes
        ids = sorted(await self.r.smembers(f"{self.prefix}:nodes"))
        live: dict[str, NodeInfo] = {}
        if ids:
            async with self.r.pipeline(transaction=False) as p:
                for i in ids:
                    p.hgetall(f"{self.prefix}:node:{_s(i)}")
                rows = await p.execute()
            dead = []
            for i, row in zip(ids, rows, strict=True):
                nid = _s(i)
                if not row:
                    dead.append(nid)
                    continue
                row = {_s(k): _s(v) for k, v in row.items()}
                live[nid] = NodeInfo(nid, row["url"], json.loads(row.get("models", "[]")),
                                     json.loads(row.get("voices", "[]")))  # fmt: skip
            if dead:
                await self.r.srem(f"{self.prefix}:nodes", *dead)
        self._nodes, self._nodes_at = live, time.monotonic()
        return live

    def _ring(self, members: list[str]) -> HashRing:
        key = tuple(sorted(members))
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) > 64:
                self._rings.clear()
            ring = self._rings[key] = HashRing(key, vnodes=self.vnodes)
        return ring

    async def replica_count(self, voice: str) -> int:
        raw = await self.r.hget(f"{self.prefix}:replicas", voice)
        return max(self.replicas, int(raw)) if raw else self.replicas

    async def set_replicas(self, voice: str, n: int) -> None:
        await self.r.hset(f"{self.prefix}:replicas", voice, n)

    async def placement(self, voice: str, model: str | None = None) -> list[NodeInfo]:
        """The nodes that serve ``voice``, owner first."""
        nodes = await self.live_nodes()
        holders = [n for n in nodes.values() if voice in n.voices]
        able = holders or [n for n in nodes.values() if model is None or model in n.models]
        if not able:
            raise NoNodeError(f"no live node serves {voice!r}" + (f" ({model})" if model else ""))
        ring = self._ring([n.id for n in able])
        return [nodes[i] for i in ring.lookup(voice, await self.replica_count(voice))]

    async def lookup(
        self, voice: str, session: str | None = None, *, model: str | None = None
    ) -> NodeInfo:
        """The node for this voice; with ``session``, the same node for the session's life."""
        await self._count(voice)
        nodes = await self.live_nodes()
        skey = f"{self.prefix}:session:{session}" if session else None
        if skey is not None:
            pinned = await self.r.get(skey)
            if pinned is not None and _s(pinned) in nodes:
                await self.r.expire(skey, int(self.session_ttl))
                return nodes[_s(pinned)]
            if pinned is not None:  # its node died: re-read membership before choosing
                nodes = await self.live_nodes(fresh=True)
        placed = await self.placement(voice, model)
        node = placed[hash64(session) % len(placed)] if session else placed[0]
        if skey is not None:
            await self.r.set(skey, node.id, ex=int(self.session_ttl))
        return node

    async def _count(self, voice: str) -> None:
        """Per-minute request rate; a busy voice grows a replica (up to ``max_replicas``)."""
        minute = int(time.time() // 60)
        key = f"{self.prefix}:rate:{voice}:{minute}"
        async with self.r.pipeline(transaction=False) as p:
            p.incr(key)
            p.expire(key, 120)
            count, _ = await p.execute()
        if int(count) > self.grow_above and int(count) % self.grow_above == 1:
            current = await self.replica_count(voice)
            if current < self.max_replicas:
                await self.set_replicas(voice, current + 1)
                logger.info("voice %s is busy (%s/min): %d replicas", voice, count, current + 1)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def session_resolver(router: Router, session: str) -> Callable[[str], Awaitable[str]]:
    """A plugin resolver: voice -> base URL, pinned to ``session``'s node while it lives."""

    async def resolve(voice: str) -> str:
        return (await router.lookup(voice, session)).url

    return resolve
