"""A pool on paper: N nodes x M LoRA voices, callers picking voices by a Zipf law, nodes lost
and coming back, routed with the same ring and the same rules as :class:`Router`.

Minute by minute: calls arrive (Poisson) and end (exponential length); each call's voice is
drawn from a Zipf distribution over the voices; a new call is pinned to a placed node that
holds its voice, else to another holder, else to its placed node, which loads the voice
(unloading its least recently used one at ``max_loras``). A voice whose lookups (each call
makes ``lookups_per_call_minute``) pass ``grow_above`` a minute gains a replica, up to
``max_replicas``, and the new replica loads it. Each minute a node is lost with probability
``churn_per_hour / 60``; its calls are re-pinned (the "moved" sessions), it returns empty
after ``down_minutes``. Nothing else moves a pinned call.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections import OrderedDict
from dataclasses import asdict, dataclass

from .ring import HashRing, hash64


@dataclass
class PoolConfig:
    nodes: int = 8
    voices: int = 400
    zipf: float = 1.1
    hours: float = 24.0
    calls_per_hour: float = 3000.0
    call_minutes: float = 3.0
    lookups_per_call_minute: float = 12.0
    """Router lookups a call makes a minute (about 4 turns, each an LLM and Orpheus requests)."""
    max_loras: int = 16
    vnodes: int = 100
    replicas: int = 1
    max_replicas: int = 4
    grow_above: int = 120
    churn_per_hour: float = 0.25
    down_minutes: float = 10.0
    seed: int = 0


@dataclass
class _Call:
    voice: str
    node: str
    ends: float


def simulate_pool(cfg: PoolConfig) -> dict[str, object]:
    """Run the pool for ``cfg.hours`` and report load spread, LoRA loads and moved calls."""
    rng = random.Random(cfg.seed)
    names = [f"gpu-{i}" for i in range(cfg.nodes)]
    voices = [f"voice-{k}" for k in range(cfg.voices)]
    weights = [1.0 / (k + 1) ** cfg.zipf for k in range(cfg.voices)]
    cdf = [0.0]
    for w in weights:
        cdf.append(cdf[-1] + w)
    total = cdf[-1]
    held: dict[str, OrderedDict[str, None]] = {n: OrderedDict() for n in names}
    down: dict[str, float] = {}  # node -> minute it returns
    replicas: dict[str, int] = {}
    rings: dict[tuple[str, ...], HashRing] = {}
    calls: list[_Call] = []
    loads = {n: 0 for n in names}
    warm_loads = 0  # loads after the first hour (the pool warming up is not steady state)
    losses: list[dict[str, int]] = []
    busy: dict[str, list[int]] = {n: [] for n in names}
    minutes = int(cfg.hours * 60)

    def ring() -> HashRing:
        members = tuple(n for n in names if n not in down)
        if members not in rings:
            rings[members] = HashRing(members, vnodes=cfg.vnodes)
        return rings[members]

    def touch(node: str, voice: str, minute: int) -> None:
        nonlocal warm_loads
        cache = held[node]
        if voice in cache:
            cache.move_to_end(voice)
            return
        while len(cache) >= cfg.max_loras:
            cache.popitem(last=False)
        cache[voice] = None
        loads[node] += 1
        if minute >= 60:
            warm_loads += 1

    def pin(voice: str, session: int, minute: int) -> str:
        placed = ring().lookup(voice, replicas.get(voice, cfg.replicas))
        ready = [n for n in placed if voice in held[n]]
        if ready:
            node = ready[hash64(str(session)) % len(ready)]
            for n in placed:  # a replica that does not hold it yet loads it
                touch(n, voice, minute)
        else:
            elsewhere = [n for n in names if n not in down and voice in held[n]]
            if elsewhere:
                node = elsewhere[hash64(str(session)) % len(elsewhere)]
                touch(placed[0], voice, minute)
            else:
                node = placed[hash64(str(session)) % len(placed)]
        touch(node, voice, minute)
        return node

    session = 0
    lam = cfg.calls_per_hour / 60
    for minute in range(minutes):
        for n, back in list(down.items()):
            if back <= minute:
                del down[n]
        calls = [c for c in calls if c.ends > minute]
        if rng.random() < cfg.churn_per_hour / 60 and len(down) < cfg.nodes - 1:
            lost = rng.choice([n for n in names if n not in down])
            down[lost] = minute + cfg.down_minutes
            held[lost].clear()
            before = {id(c): c.node for c in calls}
            moved = 0
            for c in calls:
                if c.node == lost:
                    session += 1
                    c.node = pin(c.voice, session, minute)
                    moved += 1
            others = sum(1 for c in calls if before[id(c)] != lost and c.node != before[id(c)])
            losses.append({"minute": minute, "moved": moved, "moved_from_other_nodes": others})
        for _ in range(_poisson(rng, lam)):
            session += 1
            voice = voices[bisect.bisect_right(cdf, rng.random() * total) - 1]
            calls.append(_Call(voice, pin(voice, session, minute),
                               minute + rng.expovariate(1 / cfg.call_minutes)))  # fmt: skip
        rate: dict[str, float] = {}
        for c in calls:
            rate[c.voice] = rate.get(c.voice, 0.0) + cfg.lookups_per_call_minute
            held_now = held[c.node]
            if c.voice in held_now:
                held_now.move_to_end(c.voice)
            else:  # evicted under it by a node with more live voices than max_loras
                touch(c.node, c.voice, minute)
        for voice, r in rate.items():
            have = replicas.get(voice, cfg.replicas)
            if r > cfg.grow_above * have and have < cfg.max_replicas:
                replicas[voice] = have + 1
        if minute >= 60 and not down:  # load spread: steady state, every node up
            for n in names:
                busy[n].append(sum(1 for c in calls if c.node == n))

    steady = {n: statistics.fmean(v) if v else 0.0 for n, v in busy.items()}
    live_mean = statistics.fmean(steady.values())
    hours_after_warmup = max(cfg.hours - 1, 1e-9)
    return {
        "config": asdict(cfg),
        "concurrent_calls_mean": round(sum(steady.values()), 1),
        "per_node_calls_mean": {n: round(v, 1) for n, v in steady.items()},
        "load_spread_max_over_mean": round(max(steady.values()) / live_mean, 3),
        "load_spread_min_over_mean": round(min(steady.values()) / live_mean, 3),
        "lora_loads_total": sum(loads.values()),
        "lora_loads_per_hour": round(warm_loads / hours_after_warmup, 1),
        "lora_loads_per_node_hour": round(warm_loads / hours_after_warmup / cfg.nodes, 2),
        "voices_with_replicas": {
            str(k): sum(1 for v in replicas.values() if v == k)
            for k in range(2, cfg.max_replicas + 1)
        },
        "node_losses": len(losses),
        "calls_moved_per_loss_mean": round(statistics.fmean([x["moved"] for x in losses]), 1)
        if losses
        else 0.0,
        "calls_moved_from_other_nodes": sum(x["moved_from_other_nodes"] for x in losses),
    }


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's method for small means, a rounded normal for large)."""
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
