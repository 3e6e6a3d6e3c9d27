"""Benchmark: voice-to-voice with each embedded LLM, in one sitting, on the real call path.

Runs the conversation scenario (four caller turns, one with a mid-turn pause) through the
harness with our turn handling, once per model per run, alternating the order run by run so
every model sees the same machine load. The agent has the restaurant's facts, as a business
would configure it. Writes ``benchmarks/results/llm_models.json`` and prints a table.

    python benchmarks/llm_models.py [--runs 3] [--models qwen2.5-0.5b,smollm2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from turn_taking import _pct, _write  # noqa: E402  (this script's own folder)

from worker.facts import load_facts  # noqa: E402
from worker.harness import load_scenario, run_scenario  # noqa: E402
from worker.models import load_models  # noqa: E402
from worker.settings import load_settings  # noqa: E402


async def _one(name: str, scenario: Any) -> dict[str, Any]:
    settings = load_settings()
    settings.llm.embedded_model = name
    settings.agent.facts = load_facts(ROOT / "tests/evals/restaurant.facts.yaml")
    models = await load_models(settings)
    try:
        result = await run_scenario(models, scenario, "default")
    finally:
        await models.aclose()
    result.pop("heard")
    return result


async def main(runs: int, names: list[str], out: Path) -> None:
    scenario = load_scenario(ROOT / "benchmarks/scenarios/conversation.yaml")
    raw: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    started = time.time()
    for run in range(runs):
        for name in names if run % 2 == 0 else names[::-1]:
            raw[name].append(await _one(name, scenario))
            print(f"run {run + 1}/{runs} {name} ({time.time() - started:.0f}s)", file=sys.stderr)
    summary = {}
    for name, results in raw.items():
        turns = [t for r in results for t in r["turns"]]
        v2v = [t["voice_to_voice_ms"] for t in turns if t.get("voice_to_voice_ms") is not None]
        ttft = [
            t["timings"]["llm_first_token_ms"]
            for t in turns
            if (t.get("timings") or {}).get("llm_first_token_ms") is not None
        ]
        summary[name] = {
            "voice_to_voice_p50_ms": _pct(v2v, 50),
            "voice_to_voice_p95_ms": _pct(v2v, 95),
            "llm_first_token_p50_ms": round(statistics.median(ttft), 1) if ttft else None,
            "turns_measured": len(v2v),
            "replies": [t.get("agent_text", "") for t in results[-1]["turns"]],
        }
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": runs,
        "summary": summary,
        "raw": raw,
    }
    _write(out, doc)
    print(f"\n| {runs} runs, {doc['machine']} | v2v P50 / P95 (ms) | LLM first token P50 (ms) |")
    print("|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['voice_to_voice_p50_ms']} / {s['voice_to_voice_p95_ms']} | "
            f"{s['llm_first_token_p50_ms']} |"
        )
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="qwen2.5-0.5b,smollm2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/llm_models.json")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.models.split(","), args.out))
