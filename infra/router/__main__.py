"""``python -m infra.router``: run a node agent, simulate a pool, or inspect the ring.

python -m infra.router node --vllm http://127.0.0.1:8000 --redis redis://127.0.0.1:6379/0 \\
    [--id gpu-0] [--adapters /adapters]
python -m infra.router simulate [--nodes 8 --voices 400 --zipf 1.1 --hours 24 ...] [--json]
python -m infra.router ring --nodes 5 --vnodes 100 --keys 10000 [--remove 1] [--json]
python -m infra.router nodes --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import fields
from pathlib import Path

from .pool import PoolConfig, simulate_pool
from .ring import simulate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.router", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    n = sub.add_parser("node", help="the agent beside one vLLM server")
    n.add_argument("--vllm", required=True, help="the vLLM server, e.g. http://127.0.0.1:8000")
    n.add_argument("--redis", default=os.environ.get("WORKER_ROUTER__REDIS_URL"),
                   help="the router's Redis, e.g. redis://host:6379/1 (default: "
                   "$WORKER_ROUTER__REDIS_URL, the worker's setting)")  # fmt: skip
    n.add_argument("--id", default=None, help="node id (default: host name and vLLM port)")
    n.add_argument("--url", default=None, help="the URL workers reach vLLM at (default --vllm)")
    adapters = os.environ.get("WORKER_ROUTER__ADAPTERS_DIR")
    n.add_argument(
        "--adapters", type=Path, default=Path(adapters) if adapters else None,
        help="LoRA voices, a folder each (default: $WORKER_ROUTER__ADAPTERS_DIR)",
    )  # fmt: skip
    n.add_argument("--server-adapters", type=Path, default=None,
                   help="the adapter folder's path as the vLLM server sees it")  # fmt: skip
    n.add_argument("--max-loras", type=int, default=None,
                   help="voices held at most (default: the server's --max-loras)")  # fmt: skip
    n.add_argument("--prefix", default="router")
    n.add_argument("--ttl", type=float, default=10.0, help="seconds a lapsed node stays listed")
    n.add_argument("--vnodes", type=int, default=100)
    n.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for running requests, then deregisters")  # fmt: skip

    s = sub.add_parser("simulate", help="a pool of nodes and Zipf-popular voices, with churn")
    for f in fields(PoolConfig):
        s.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    s.add_argument("--json", action="store_true")

    g = sub.add_parser("ring", help="load per node and keys moved, without Redis")
    g.add_argument("--nodes", type=int, required=True)
    g.add_argument("--vnodes", type=int, default=100)
    g.add_argument("--keys", type=int, default=10000)
    g.add_argument("--remove", type=int, default=0, help="nodes that leave")
    g.add_argument("--add", type=int, default=0, help="nodes that join")
    g.add_argument("--probes", type=int, default=8, help="hash probes per key")
    g.add_argument("--json", action="store_true")

    ls = sub.add_parser("nodes", help="the live nodes registered in Redis")
    ls.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ls.add_argument("--prefix", default="router")
    args = p.parse_args(argv)

    if args.command == "node":
        return _node(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "ring":
        return _ring(args)
    return asyncio.run(_nodes(args.redis, args.prefix))


def _node(args: argparse.Namespace) -> int:
    from .node import NodeAgentConfig, run_node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    if not args.redis:
        print("error: give --redis (or set WORKER_ROUTER__REDIS_URL)", file=sys.stderr)
        return 2
    if args.adapters is not None and not args.adapters.is_dir():
        print(f"error: --adapters {args.adapters} is not a folder", file=sys.stderr)
        return 2
    port = args.vllm.rstrip("/").removesuffix("/v1").rsplit(":", 1)[-1]
    cfg = NodeAgentConfig(
        vllm=args.vllm, node_id=args.id or f"{socket.gethostname()}-{port}", url=args.url,
        adapters=args.adapters, server_adapters=args.server_adapters, prefix=args.prefix,
        ttl=args.ttl, max_loras=args.max_loras, vnodes=args.vnodes,
        drain_timeout=args.drain_timeout,
    )  # fmt: skip
    return asyncio.run(run_node(cfg, args.redis))


def _simulate(args: argparse.Namespace) -> int:
    cfg = PoolConfig(**{f.name: getattr(args, f.name) for f in fields(PoolConfig)})
    if cfg.nodes < 1 or cfg.voices < 1 or cfg.max_loras < 1 or cfg.hours <= 1:
        print("error: need nodes >= 1, voices >= 1, max-loras >= 1, hours > 1", file=sys.stderr)
        return 2
    print(f"simulating {cfg.nodes} nodes x {cfg.voices} voices for {cfg.hours:g} h ...",
          file=sys.stderr)  # fmt: skip
    out = simulate_pool(cfg)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, value in out.items():
        if key != "config":
            print(f"{key}: {value}")
    return 0


def _ring(args: argparse.Namespace) -> int:
    if args.nodes < 1 or args.vnodes < 1 or args.keys < 1 or args.remove >= args.nodes:
        print("error: need nodes >= 1, vnodes >= 1, keys >= 1, remove < nodes", file=sys.stderr)
        return 2
    out = simulate(args.nodes, args.vnodes, args.keys, remove=args.remove, add=args.add,
                   probes=args.probes)  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    load = out["load"]
    assert isinstance(load, dict)
    for node, count in load["per_node"].items():
        print(f"{node}: {count}")
    print(f"max deviation from the mean: {load['max_deviation']:.1%}")
    if "moved_fraction" in out:
        print(f"keys moved: {out['moved_fraction']:.1%}")
    return 0


async def _nodes(url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    from .registry import Router

    r = aioredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        nodes = await Router(r, prefix=prefix).live_nodes(fresh=True)
    finally:
        await r.aclose()
    print(json.dumps({k: vars(v) for k, v in nodes.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
