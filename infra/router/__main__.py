"""``python -m infra.router``: simulate the ring, or list the live nodes in Redis.

python -m infra.router simulate --nodes 5 --vnodes 100 --keys 10000 [--remove 1] --json
python -m infra.router nodes --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .ring import simulate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.router", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="load per node and keys moved, without Redis")
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--vnodes", type=int, default=100)
    s.add_argument("--keys", type=int, default=10000)
    s.add_argument("--remove", type=int, default=0, help="nodes that leave")
    s.add_argument("--add", type=int, default=0, help="nodes that join")
    s.add_argument("--probes", type=int, default=8, help="hash probes per key")
    s.add_argument("--json", action="store_true")
    n = sub.add_parser("nodes", help="the live nodes registered in Redis")
    n.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    n.add_argument("--prefix", default="router")
    args = p.parse_args(argv)
    if args.command == "simulate":
        if args.nodes < 1 or args.vnodes < 1 or args.keys < 1 or args.remove >= args.nodes:
            print("error: need nodes >= 1, vnodes >= 1, keys >= 1, remove < nodes", file=sys.stderr)
            return 2
        out = simulate(args.nodes, args.vnodes, args.keys, remove=args.remove, add=args.add,
                       probes=args.probes)  # fmt: skip
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            load = out["load"]
            assert isinstance(load, dict)
            for node, count in load["per_node"].items():
                print(f"{node}: {count}")
            print(f"max deviation from the mean: {load['max_deviation']:.1%}")
            if "moved_fraction" in out:
                print(f"keys moved: {out['moved_fraction']:.1%}")
        return 0
    return asyncio.run(_nodes(args.redis, args.prefix))


async def _nodes(url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    from .registry import Router

    r = aioredis.from_url(url)
    try:
        nodes = await Router(r, prefix=prefix).live_nodes(fresh=True)
    finally:
        await r.aclose()
    print(json.dumps({k: vars(v) for k, v in nodes.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
