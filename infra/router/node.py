"""The node agent: keeps one vLLM server's place in the ring and loads the voices sent to it.

``python -m infra.router node --vllm URL --redis URL [--id ID] [--adapters DIR]`` runs beside
each vLLM server. Every beat (a third of the TTL) it reads the server's ``/v1/models`` (base
models, and the LoRA adapters it holds) and writes the node's record; if the server does not
answer, the node leaves the ring until it does. Every beat also rewrites the record, so a
restarted (empty) Redis has the node again within a beat.

Voices load where the ring sends them: the agent pops its load list (``{prefix}:load:{id}``,
filled by workers whose session's voice is placed here) and, each beat, checks the voices with
more than one replica; a voice placed here that the server does not hold is loaded from the
adapter folder through vLLM's runtime LoRA API (the server needs
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) before the node announces it. At ``max_loras``
voices the one least recently used by any session (``{prefix}:used:{id}``) is unloaded first.

SIGTERM (or SIGINT) drains: the node is marked draining (new sessions go elsewhere, pinned
ones stay) until the server has no request running or ``drain_timeout`` passes, then it
deregisters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis

from .registry import REDIS_DOWN, NodeInfo, NodeRegistration, Router, _s

logger = logging.getLogger("infra.router.node")


@dataclass
class NodeAgentConfig:
    vllm: str
    """The vLLM server's base URL (``http://127.0.0.1:8000``; ``/v1`` is added if missing)."""
    node_id: str
    url: str | None = None
    """The base URL workers use to reach the server; default ``vllm``'s."""
    adapters: Path | None = None
    """Folder of LoRA adapters, one sub-folder per voice (a shared volume)."""
    server_adapters: Path | None = None
    """The same folder as the vLLM server sees it, when mounted elsewhere."""
    prefix: str = "router"
    ttl: float = 10.0
    max_loras: int | None = None
    """Voices held at most; default the server's ``--max-loras`` (from its metrics)."""
    vnodes: int = 100
    drain_timeout: float = 30.0
    http_timeout: float = 10.0
    load_timeout: float = 120.0
    voices_held: list[str] = field(default_factory=list)


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def catalogue(folder: Path | None) -> list[str]:
    """The voices an adapter folder holds: its sub-folders with an ``adapter_config.json``."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "adapter_config.json").is_file())


class VLLMUnavailable(RuntimeError):
    """The vLLM server did not answer."""


class NodeAgent:
    """One vLLM server's presence in the pool."""

    def __init__(self, cfg: NodeAgentConfig, r: aioredis.Redis) -> None:
        self.cfg, self.r = cfg, r
        self.base = _v1(cfg.vllm)
        self.root = self.base.removesuffix("/v1")
        self.info = NodeInfo(cfg.node_id, _v1(cfg.url or cfg.vllm))
        self.reg = NodeRegistration(r, self.info, prefix=cfg.prefix, ttl=cfg.ttl)
        self.router = Router(r, prefix=cfg.prefix, vnodes=cfg.vnodes, cache_s=1.0)
        self.stopping = asyncio.Event()
        self.registered = False
        self.loads = 0
        self.unloads = 0
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()  # one load or unload at a time

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.http_timeout, connect=3.0)
            )
        return self._http

    async def _get(self, path: str) -> Any:
        """GET ``path`` on the server (``/v1/models`` as JSON, anything else as text)."""
        url = self.root + path
        try:
            async with self.http().get(url) as resp:
                if resp.status != 200:
                    raise VLLMUnavailable(f"{url} answered {resp.status}")
                return await (resp.json() if path.endswith("models") else resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise VLLMUnavailable(f"{url}: {e!r}") from e

    async def read_server(self) -> None:
        """Base models and held adapters from ``/v1/models``; ``max_loras`` once known."""
        listing = await self._get("/v1/models")
        cards = listing.get("data", []) if isinstance(listing, dict) else []
        self.info.models = [c["id"] for c in cards if not c.get("parent")]
        self.info.voices = [c["id"] for c in cards if c.get("parent")]
        if self.cfg.max_loras is not None:
            self.info.max_loras = self.cfg.max_loras
        elif not self.info.max_loras:
            with contextlib.suppress(VLLMUnavailable):
                metrics = await self._get("/metrics")
                m = re.search(r'vllm:lora_requests_info\{[^}]*max_lora="(\d+)"', metrics)
                if m:
                    self.info.max_loras = int(m.group(1))

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        try:
            async with self.http().post(
                self.root + path, json=body,
                timeout=aiohttp.ClientTimeout(total=self.cfg.load_timeout),
            ) as resp:  # fmt: skip
                if resp.status == 404 and "lora_adapter" in path:
                    raise VLLMUnavailable(
                        f"{path} is not served: start vLLM with --enable-lora and "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
                    )
                if resp.status != 200:
                    raise VLLMUnavailable(f"{path} answered {resp.status}: "
                                          f"{(await resp.text())[:300]}")  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as e:
            raise VLLMUnavailable(f"{path}: {e!r}") from e

    async def load(self, voice: str) -> bool:
        """Load ``voice`` into the server (unloading the coldest at the limit), then announce."""
        async with self._lock:
            await self.read_server()
            if voice in self.info.voices:
                return True
            if voice not in catalogue(self.cfg.adapters):
                logger.error("asked to load %s, which is not in %s", voice, self.cfg.adapters)
                return False
            limit = self.info.max_loras
            while limit and len(self.info.voices) >= limit:
                cold = await self._coldest()
                logger.info("unloading %s (least recently used) to make room for %s",
                            cold, voice)  # fmt: skip
                await self._post("/v1/unload_lora_adapter", {"lora_name": cold})
                self.unloads += 1
                self.info.voices.remove(cold)
                with contextlib.suppress(*REDIS_DOWN):
                    await self.r.zrem(f"{self.cfg.prefix}:used:{self.info.id}", cold)
            folder = self.cfg.server_adapters or self.cfg.adapters
            assert folder is not None
            started = time.monotonic()
            await self._post("/v1/load_lora_adapter",
                             {"lora_name": voice, "lora_path": str(folder / voice)})  # fmt: skip
            self.loads += 1
            with contextlib.suppress(*REDIS_DOWN):  # just loaded for a session: not the coldest
                await self.r.zadd(f"{self.cfg.prefix}:used:{self.info.id}", {voice: time.time()})
            await self.read_server()
            logger.info("loaded %s in %.2f s", voice, time.monotonic() - started)
            if self.registered:
                await self.reg.beat()  # announce it now, not at the next beat
            return voice in self.info.voices

    async def _coldest(self) -> str:
        used: dict[str, float] = {}
        with contextlib.suppress(*REDIS_DOWN):
            rows = await self.r.zrange(f"{self.cfg.prefix}:used:{self.info.id}", 0, -1,
                                       withscores=True)  # fmt: skip
            used = {_s(k): float(v) for k, v in cast("list[tuple[bytes, float]]", rows)}
        return min(self.info.voices, key=lambda v: (used.get(v, 0.0), v))

    async def _reconcile(self) -> None:
        """Load the replicated voices the ring now places here (a busy voice grew)."""
        known = set(catalogue(self.cfg.adapters))
        if not known:
            return
        raw = await self.r.hgetall(f"{self.cfg.prefix}:replicas")
        for v, n in raw.items():
            voice = _s(v)
            if voice not in known or voice in self.info.voices or int(n) < 2:
                continue
            placed = await self.router.placement(voice)
            if any(p.id == self.info.id for p in placed):
                logger.info("the ring places a replica of %s here", voice)
                await self._load_logged(voice)

    async def _load_logged(self, voice: str) -> None:
        try:
            await self.load(voice)
        except VLLMUnavailable as e:
            logger.error("loading %s failed: %s", voice, e)
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                await self.r.delete(f"{self.cfg.prefix}:loading:{self.info.id}:{voice}")

    async def _publish_catalogue(self) -> None:
        voices = catalogue(self.cfg.adapters)
        if voices and self.info.models:
            await self.r.hset(f"{self.cfg.prefix}:catalog",
                              mapping=dict.fromkeys(voices, self.info.models[0]))  # fmt: skip

    async def beat(self) -> None:
        """Read the server, then register (or leave while it is down)."""
        try:
            await self.read_server()
        except VLLMUnavailable as e:
            if self.registered:
                logger.warning("vLLM at %s is down (%s); leaving the ring", self.base, e)
                with contextlib.suppress(*REDIS_DOWN):
                    await self.reg.stop(deregister=True)
                self.registered = False
            return
        try:
            await self.reg.beat()
            await self._publish_catalogue()
            if not self.registered:
                logger.info("registered %s at %s: models %s, voices %s", self.info.id,
                            self.info.url, self.info.models, self.info.voices)  # fmt: skip
            self.registered = True
            if not self.info.draining:
                await self._reconcile()
        except REDIS_DOWN as e:
            if self.reg.failed_beats == 0:
                logger.warning("Redis unreachable (%r); retrying every beat", e)
            self.reg.failed_beats += 1
        else:
            if self.reg.failed_beats:
                logger.info("Redis is back; registered again")
            self.reg.failed_beats = 0

    async def _loads(self) -> None:
        """Pop the load list; each voice is loaded in turn."""
        key = f"{self.cfg.prefix}:load:{self.info.id}"
        while not self.stopping.is_set():
            try:
                got = await self.r.blpop([key], timeout=1)
            except REDIS_DOWN:
                await asyncio.sleep(1.0)
                continue
            if got is not None and self.registered and not self.info.draining:
                await self._load_logged(_s(got[1]))

    async def run(self) -> None:
        """Until ``stopping`` is set; then drain and deregister."""
        waited = False
        loads = asyncio.create_task(self._loads())
        try:
            while not self.stopping.is_set():
                await self.beat()
                if not self.registered and not waited:
                    logger.info("waiting for vLLM at %s", self.base)
                    waited = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.cfg.ttl / 3)
            await self._drain()
        finally:
            loads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loads
            if self._http is not None:
                await self._http.close()

    async def _drain(self) -> None:
        if not self.registered:
            return
        self.info.draining = True
        with contextlib.suppress(*REDIS_DOWN):
            await self.reg.beat()
        logger.info("draining %s: no new sessions", self.info.id)
        deadline = time.monotonic() + self.cfg.drain_timeout
        while time.monotonic() < deadline:
            if await self._running() == 0:
                break
            await asyncio.sleep(0.5)
            with contextlib.suppress(*REDIS_DOWN):
                await self.reg.beat()
        with contextlib.suppress(*REDIS_DOWN):
            await self.reg.stop(deregister=True)
        self.registered = False
        logger.info("deregistered %s", self.info.id)

    async def _running(self) -> float:
        try:
            text = await self._get("/metrics")
        except VLLMUnavailable:
            return 0.0  # nothing can finish on a server that is gone
        m = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)", text, re.M)
        return float(m.group(1)) if m else 0.0


async def run_node(cfg: NodeAgentConfig, redis_url: str) -> int:
    """Run an agent until SIGTERM/SIGINT."""
    r = aioredis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
    agent = NodeAgent(cfg, r)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopping.set)
    print(f"node agent {cfg.node_id}: vLLM {agent.base}, Redis {_redacted(redis_url)}",
          flush=True)  # fmt: skip
    try:
        await agent.run()
    finally:
        await r.aclose()
    return 0


def _redacted(url: str) -> str:
    """A Redis URL without its password."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)
