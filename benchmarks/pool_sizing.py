"""Benchmark on paper: the voice pool simulation (``python -m infra.router simulate``) over the
configurations `docs/scaling.md` sizes a pool with, each over several seeds (medians).

Prints a Markdown table and writes benchmarks/results/pool_sizing.json.

    python benchmarks/pool_sizing.py [--seeds 5] [--hours 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.router.pool import PoolConfig, simulate_pool  # noqa: E402

CASES: list[tuple[str, dict[str, object]]] = [
    ("8 GPUs, 400 voices, max-loras 16 (the default config)", {}),
    ("... max-loras 32", {"max_loras": 32}),
    ("... max-loras 64", {"max_loras": 64}),
    ("... no replicas (max_replicas 1)", {"max_replicas": 1, "max_loras": 64}),
    ("... flatter popularity (Zipf 0.8), max-loras 64", {"zipf": 0.8, "max_loras": 64}),
    ("16 GPUs, 2000 voices, 6000 calls/h, max-loras 64",
     {"nodes": 16, "voices": 2000, "calls_per_hour": 6000.0, "max_loras": 64}),
    ("... max_replicas 8",
     {"nodes": 16, "voices": 2000, "calls_per_hour": 6000.0, "max_loras": 64,
      "max_replicas": 8}),
]  # fmt: skip
FIGURES = [
    ("load_spread_max_over_mean", "busiest node / mean"),
    ("load_spread_min_over_mean", "idlest node / mean"),
    ("lora_loads_per_node_hour", "LoRA loads per node-hour"),
    ("calls_moved_per_loss_mean", "calls moved per node loss"),
    ("calls_moved_from_other_nodes", "calls moved off surviving nodes"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--hours", type=float, default=24.0)
    args = ap.parse_args()
    rows = []
    for name, change in CASES:
        runs = []
        for seed in range(args.seeds):
            cfg = replace(PoolConfig(hours=args.hours, seed=seed), **change)  # type: ignore[arg-type]
            runs.append(simulate_pool(cfg))
            print(f"{name}: seed {seed} done", file=sys.stderr, flush=True)
        medians = {k: statistics.median(float(r[k]) for r in runs) for k, _ in FIGURES}  # type: ignore[arg-type]
        medians["concurrent_calls_mean"] = statistics.median(
            float(r["concurrent_calls_mean"])
            for r in runs  # type: ignore[arg-type]
        )
        medians["node_losses"] = statistics.median(float(r["node_losses"]) for r in runs)  # type: ignore[arg-type]
        rows.append({"case": name, "config": runs[0]["config"], "median": medians})
    print("| pool | calls at once | " + " | ".join(label for _, label in FIGURES) + " |")
    print("|---|---|" + "---|" * len(FIGURES))
    for row in rows:
        m = row["median"]
        assert isinstance(m, dict)
        cells = [f"{m[k]:.2f}" if "spread" in k else f"{m[k]:.1f}" for k, _ in FIGURES]
        print(f"| {row['case']} | {m['concurrent_calls_mean']:.0f} | " + " | ".join(cells) + " |")
    out = ROOT / "benchmarks" / "results" / "pool_sizing.json"
    out.write_text(json.dumps({"seeds": args.seeds, "hours": args.hours, "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
