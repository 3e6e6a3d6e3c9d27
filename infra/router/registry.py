"""GPU nodes and voice routing in Redis.

A node (its agent, ``infra.router.node``) registers a hash ``{prefix}:node:{id}`` with its URL,
the base models it serves and the LoRA voices it holds, with a TTL renewed by a heartbeat;
when the heartbeat lapses the key expires and the node leaves the ring. A draining node stays
for the sessions pinned to it but takes no new ones.

Placement: a base model is served by every live node that serves it, so its sessions spread
over all of them. A LoRA voice goes to the ring over the nodes that serve its base model
(``{prefix}:catalog`` maps voice -> base, written by the node agents from their adapter
folders): the voice's replica count of nodes clockwise from its hash. A session is pinned
(``{prefix}:session:{sid}``) to a placed node that already holds the voice, chosen by the
session's hash; placed nodes that do not hold it yet are asked to load it
(``{prefix}:load:{node}``, a list their agent pops). When no placed node holds it (a new
voice, or after a node was lost) the session waits, bounded, for its node to load it. A pinned
session stays on its node while the node lives and holds the voice. Each lookup counts towards
the voice's request rate; above ``grow_above`` lookups a minute the voice gains a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .ring import HashRing, hash64

logger = logging.getLogger("infra.router")

REDIS_DOWN = (aioredis.RedisError, OSError, TimeoutError)
"""What a Redis outage raises at a client: refused or dropped connections, or a timeout."""


class NoNodeError(LookupError):
    """No live node can serve the voice."""


@dataclass
class NodeInfo:
    id: str
    url: str
    models: list[str] = field(default_factory=list)
    """Base models the node's server serves."""
    voices: list[str] = field(default_factory=list)
    """LoRA adapters it holds (loaded in the server)."""
    draining: bool = False
    """Going away: keeps its pinned sessions, takes no new ones."""
    max_loras: int = 0
    """Adapters it holds at most (0: no limit known)."""

    def serves(self, name: str) -> bool:
        return name in self.models or name in self.voices


def _node_fields(info: NodeInfo) -> dict[Any, Any]:  # redis-py wants its own key types
    return {
        "url": info.url, "models": json.dumps(info.models), "voices": json.dumps(info.voices),
        "draining": "1" if info.draining else "0", "max_loras": str(info.max_loras),
        "seen": f"{time.time():.3f}",
    }  # fmt: skip


class NodeRegistration:
    """A GPU node's presence in the ring: register, then heartbeat until stopped.

    Every beat writes the whole record, so after a Redis restart (an empty Redis) the next
    beat registers the node again."""

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
        self.failed_beats = 0

    async def beat(self) -> None:
        key = f"{self.prefix}:node:{self.info.id}"
        async with self.r.pipeline(transaction=True) as p:
            p.delete(key)  # voices unloaded since the last beat must not linger
            p.hset(key, mapping=_node_fields(self.info))
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
                if self.failed_beats:
                    logger.info("heartbeat for %s is back after %d failures", self.info.id,
                                self.failed_beats)  # fmt: skip
                self.failed_beats = 0
            except REDIS_DOWN as e:  # keep trying; the TTL decides
                self.failed_beats += 1
                if self.failed_beats == 1:
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


@dataclass
class Route:
    """Where a lookup sent a session: the node, and whether it still has to load the voice."""

    node: NodeInfo
    loading: bool = False


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
        grow_above: int = 120,
        session_ttl: float = 3600.0,
        cache_s: float = 1.0,
    ) -> None:
        self.r, self.prefix, self.vnodes = r, prefix, vnodes
        self.replicas, self.max_replicas = replicas, max_replicas
        self.grow_above, self.session_ttl, self.cache_s = grow_above, session_ttl, cache_s
        self._nodes: dict[str, NodeInfo] = {}
        self._nodes_at = 0.0
        self.redis_retry_s = 3.0
        """After a failed lookup, sessions go straight to their default for this long."""
        self.redis_retry_at = 0.0
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
                live[nid] = _node_from(nid, {_s(k): _s(v) for k, v in row.items()})
            if dead:
                await self.r.srem(f"{self.prefix}:nodes", *dead)
        self._nodes, self._nodes_at = live, time.monotonic()
        return live

    async def node(self, node_id: str) -> NodeInfo | None:
        """One node's record, read now."""
        row = await self.r.hgetall(f"{self.prefix}:node:{node_id}")
        return _node_from(node_id, {_s(k): _s(v) for k, v in row.items()}) if row else None

    def ring(self, members: Collection[str]) -> HashRing:
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

    async def base_of(self, voice: str) -> str | None:
        """The base model a LoRA voice needs, from the node agents' adapter catalogue."""
        raw = await self.r.hget(f"{self.prefix}:catalog", voice)
        return _s(raw) if raw else None

    async def placement(
        self, name: str, model: str | None = None, *, avoid: Collection[str] = ()
    ) -> list[NodeInfo]:
        """The nodes that serve ``name`` (a base model or a LoRA voice), owner first; draining
        nodes and ``avoid`` are left out."""
        nodes = {k: n for k, n in (await self.live_nodes()).items()
                 if not n.draining and k not in avoid}  # fmt: skip
        base_servers = [n for n in nodes.values() if name in n.models]
        if base_servers:  # a base model: every server of it shares its sessions
            able, count = base_servers, len(base_servers)
        else:
            base = model or await self.base_of(name)
            if base is not None:
                able = [n for n in nodes.values() if base in n.models]
            else:  # not in the catalogue: its holders, or any node (one may load it)
                able = [n for n in nodes.values() if name in n.voices] or list(nodes.values())
            count = await self.replica_count(name)
        if not able:
            raise NoNodeError(f"no live node serves {name!r}" + (f" ({model})" if model else ""))
        return [nodes[i] for i in self.ring([n.id for n in able]).lookup(name, count)]

    async def route(
        self,
        name: str,
        session: str | None = None,
        *,
        model: str | None = None,
        avoid: Collection[str] = (),
    ) -> Route:
        """The node for ``name``; with ``session``, the same node for the session's life (while
        the node lives, holds the voice and is not in ``avoid``). ``loading`` says the node was
        just asked to load the voice: wait for it with :meth:`wait_loaded`."""
        await self._count(name)
        nodes = await self.live_nodes()
        skey = f"{self.prefix}:session:{session}" if session else None
        if skey is not None:
            pinned = await self.r.get(skey)
            if pinned is not None:
                node = nodes.get(_s(pinned))
                if (
                    node is not None
                    and node.id not in avoid
                    # a catalogued voice the node no longer holds (unloaded) is placed again
                    and (node.serves(name) or await self.base_of(name) is None)
                ):
                    await self.r.expire(skey, int(self.session_ttl))
                    await self._touch(node, name)
                    return Route(node)
                nodes = await self.live_nodes(fresh=True)  # its node left: read membership again
        placed = await self.placement(name, model, avoid=avoid)
        pick = hash64(session) if session else 0
        ready = [n for n in placed if n.serves(name)]
        # only voices in the agents' catalogue can be loaded; any other name is sent as it is
        loadable = not ready or len(ready) < len(placed)
        loadable = loadable and await self.base_of(name) is not None
        loading = False
        if ready:
            node = ready[pick % len(ready)]
            for n in placed if loadable else ():  # replicas yet to load it (a busy voice grew)
                if not n.serves(name):
                    await self.request_load(n.id, name)
        else:
            elsewhere = [n for n in nodes.values() if n.serves(name) and not n.draining
                         and n.id not in avoid]  # fmt: skip
            if elsewhere:  # held outside its placement (membership changed): use it meanwhile
                node = elsewhere[pick % len(elsewhere)]
                if loadable:
                    await self.request_load(placed[0].id, name)
            else:
                node = placed[pick % len(placed)]
                if loadable:
                    await self.request_load(node.id, name)
                    loading = True
        if skey is not None:
            await self.r.set(skey, node.id, ex=int(self.session_ttl))
        await self._touch(node, name)
        return Route(node, loading)

    async def lookup(
        self, voice: str, session: str | None = None, *, model: str | None = None
    ) -> NodeInfo:
        """:meth:`route`, waiting (up to 60 s) for a node that has to load the voice first."""
        got = await self.route(voice, session, model=model)
        if got.loading:
            await self.wait_loaded(got.node.id, voice, 60.0)
        return got.node

    async def request_load(self, node_id: str, voice: str) -> None:
        """Ask a node's agent to load ``voice`` (once per 30 s per node and voice)."""
        if await self.r.set(f"{self.prefix}:loading:{node_id}:{voice}", "1", nx=True, ex=30):
            await self.r.rpush(f"{self.prefix}:load:{node_id}", voice)
            logger.info("asked %s to load %s", node_id, voice)

    async def wait_loaded(self, node_id: str, voice: str, within: float) -> NodeInfo:
        """The node's record once it holds ``voice``; NoNodeError when it does not in time."""
        deadline = time.monotonic() + within
        while True:
            node = await self.node(node_id)
            if node is None:
                raise NoNodeError(f"{node_id} left while loading {voice!r}")
            if node.serves(voice):
                self._nodes_at = 0.0  # the next lookup reads the new holder
                return node
            if time.monotonic() >= deadline:
                raise NoNodeError(f"{node_id} did not load {voice!r} in {within:.0f} s")
            await asyncio.sleep(0.1)

    async def unpin(self, session: str) -> None:
        await self.r.delete(f"{self.prefix}:session:{session}")

    async def _touch(self, node: NodeInfo, name: str) -> None:
        """When a voice was last used on a node: its agent unloads the coldest first."""
        if name in node.voices:
            await self.r.zadd(f"{self.prefix}:used:{node.id}", {name: time.time()})

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


def _node_from(node_id: str, row: dict[str, str]) -> NodeInfo:
    return NodeInfo(
        node_id, row["url"], json.loads(row.get("models", "[]")),
        json.loads(row.get("voices", "[]")), row.get("draining") == "1",
        int(row.get("max_loras") or 0),
    )  # fmt: skip


class SessionRoute:
    """A plugin resolver for one session: voice -> base URL on the session's node.

    Each lookup is bounded by ``timeout``; when Redis is down (or slow) the request goes to
    ``default_url`` (logged once per outage, counted through ``on_fallback``). ``unreachable``
    is told by the plugins when the node refused the connection: the session leaves that node
    for ``avoid_s`` and is pinned again on the next lookup (the plugins retry once).
    """

    def __init__(
        self,
        router: Router,
        session: str,
        *,
        default_url: str | None = None,
        timeout: float = 1.0,
        load_timeout: float = 30.0,
        avoid_s: float = 30.0,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.router, self.session = router, session
        self.default_url, self.timeout, self.load_timeout = default_url, timeout, load_timeout
        self.avoid_s, self.on_fallback = avoid_s, on_fallback
        self._avoid: dict[str, float] = {}
        self._last: dict[str, str] = {}  # url -> node id of the nodes this session was sent to
        self._outage = False

    async def __call__(self, name: str) -> str:
        now = time.monotonic()
        self._avoid = {k: t for k, t in self._avoid.items() if t > now}
        if self.default_url is not None and now < self.router.redis_retry_at:
            # Redis failed a moment ago (for any session of this router): do not pay the
            # lookup's timeout on every request of the outage
            if self.on_fallback is not None:
                self.on_fallback("redis")
            return self.default_url
        try:
            async with asyncio.timeout(self.timeout):
                got = await self.router.route(name, self.session, avoid=set(self._avoid))
            node = got.node
            if got.loading:
                waited = time.monotonic()
                node = await self.router.wait_loaded(node.id, name, self.load_timeout)
                logger.info("%s loaded %s for session %s in %.1f s", node.id, name,
                            self.session, time.monotonic() - waited)  # fmt: skip
        except (*REDIS_DOWN, NoNodeError) as e:
            if self.default_url is None:
                if isinstance(e, NoNodeError):
                    raise
                raise NoNodeError(f"the router's Redis is unreachable: {e!r}") from e
            reason = "no_node" if isinstance(e, NoNodeError) else "redis"
            if reason == "redis":
                self.router.redis_retry_at = time.monotonic() + self.router.redis_retry_s
            if not self._outage:
                logger.warning("router lookup failed (%r); using the default node %s",
                               e, self.default_url)  # fmt: skip
            self._outage = True
            if self.on_fallback is not None:
                self.on_fallback(reason)
            return self.default_url
        if self._outage:
            logger.info("router lookups work again")
            self._outage = False
        self._last[node.url] = node.id
        return node.url

    async def unreachable(self, name: str, base_url: str) -> None:
        """``base_url`` refused a connection: avoid its node and drop the session's pin."""
        node_id = self._last.get(base_url)
        if node_id is None:  # the default node, or a URL we did not hand out
            return
        logger.warning("node %s (%s) unreachable for %s; re-pinning session %s",
                       node_id, base_url, name, self.session)  # fmt: skip
        self._avoid[node_id] = time.monotonic() + self.avoid_s
        if self.on_fallback is not None:
            self.on_fallback("repin")
        with contextlib.suppress(*REDIS_DOWN):
            async with asyncio.timeout(self.timeout):
                await self.router.unpin(self.session)
