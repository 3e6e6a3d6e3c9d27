"""Benchmark: our turn handling against the framework's stock turn handling, same process.

Runs the conversation scenario (voice-to-voice) and the barge-in scenarios (backchannel,
interruption, noise burst; with a long greeting to talk over) under both turn profiles,
alternating profiles run by run so both see the same machine load, then writes
``benchmarks/results/turn_taking.json`` and prints a Markdown table for docs/benchmarks.md.

    python benchmarks/turn_taking.py [--runs 3] [--out benchmarks/results/turn_taking.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.harness import load_scenario, run_scenario  # noqa: E402
from worker.models import load_models  # noqa: E402
from worker.settings import load_settings  # noqa: E402

LONG_GREETING = (
    "Hello and welcome to the restaurant booking line. I can book a table, change a booking, "
    "or tell you about our opening hours and the menu. What would you like to do today?"
)
PROFILES = ("default", "livekit-defaults")
BARGE_INS = ("backchannel", "interruption", "noise-burst")


def _scenarios() -> list[Any]:
    return [
        load_scenario(ROOT / "benchmarks/scenarios/conversation.yaml"),
        *(load_scenario(ROOT / f"tests/scenarios/{n}.yaml") for n in BARGE_INS),
    ]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 1)


async def main(runs: int, out: Path) -> None:
    settings = load_settings()
    conversation, *barge = _scenarios()
    models = await load_models(settings)
    raw: dict[str, list[dict[str, Any]]] = {p: [] for p in PROFILES}
    started = time.time()
    try:
        for run in range(runs):
            for profile in PROFILES if run % 2 == 0 else PROFILES[::-1]:
                settings.agent.greeting = "Hello! How can I help you today?"
                r = await run_scenario(models, conversation, profile)  # type: ignore[arg-type]
                r.pop("heard")
                raw[profile].append(r)
                settings.agent.greeting = LONG_GREETING
                for sc in barge:
                    r = await run_scenario(models, sc, profile)  # type: ignore[arg-type]
                    r.pop("heard")
                    raw[profile].append(r)
                print(
                    f"run {run + 1}/{runs} {profile} done ({time.time() - started:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        await models.aclose()

    summary: dict[str, dict[str, Any]] = {}
    for profile, results in raw.items():
        v2v = [
            t["voice_to_voice_ms"]
            for r in results
            for t in r["turns"]
            if r["scenario"] == "conversation"
        ]
        its = [i for r in results for i in r["interruptions"]]
        pauses = [i["pause_ms"] for i in its if i["pause_ms"] is not None]
        false_its = [i for i in its if i["kind"] != "interrupt"]
        real_its = [i for i in its if i["kind"] == "interrupt"]
        summary[profile] = {
            "voice_to_voice_p50_ms": _pct(v2v, 50),
            "voice_to_voice_p95_ms": _pct(v2v, 95),
            "turns_measured": len(v2v),
            "barge_in_pause_p50_ms": _pct(pauses, 50),
            "barge_ins_paused": f"{len(pauses)}/{len(its)}",
            "false_interruptions_resumed": f"{sum(i['resumed'] for i in false_its)}/"
            f"{len(false_its)}",
            "real_interruptions_cut": f"{sum(1 for i in real_its if i['cut'])}/{len(real_its)}",
            "cut_offs": sum(r["summary"]["cut_offs"] for r in results),
            "wasted_speculative_tokens": sum(r["speculation"]["wasted_tokens"] for r in results),
            "speculative_started_used_cancelled": [
                sum(r["speculation"][k] for r in results) for k in ("started", "used", "cancelled")
            ],
        }
    ours, stock = summary["default"], summary["livekit-defaults"]
    ratio = (
        round(stock["voice_to_voice_p50_ms"] / ours["voice_to_voice_p50_ms"], 2)
        if ours["voice_to_voice_p50_ms"] and stock["voice_to_voice_p50_ms"]
        else None
    )
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "runs": runs,
        "summary": summary,
        "stock_over_ours_v2v_p50": ratio,
        "raw": raw,
    }
    _write(out, doc)
    rows = [
        ("voice-to-voice P50 / P95 (ms)", "voice_to_voice_p50_ms", "voice_to_voice_p95_ms"),
    ]
    print(f"\n| {runs} runs, {doc['machine']} | ours (`default`) | stock (`livekit-defaults`) |")
    print("|---|---|---|")
    for label, a, b in rows:
        print(f"| {label} | {ours[a]} / {ours[b]} | {stock[a]} / {stock[b]} |")
    print(f"| stock / ours, voice-to-voice P50 | {ratio}x | 1.0x |")
    for label, key in (
        ("barge-in: caller onset to playout paused, P50 (ms)", "barge_in_pause_p50_ms"),
        ("barge-ins that paused playout", "barge_ins_paused"),
        ("backchannels and noise bursts resumed", "false_interruptions_resumed"),
        ("real interruptions cut", "real_interruptions_cut"),
        ("cut-offs (agent talking in a mid-turn pause or over the caller)", "cut_offs"),
        ("speculative replies started / used / cancelled", "speculative_started_used_cancelled"),
        ("wasted speculative LLM chunks", "wasted_speculative_tokens"),
    ):
        print(f"| {label} | {ours[key]} | {stock[key]} |")
    print(f"\nwrote {out}", file=sys.stderr)


def _write(out: Path, doc: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/turn_taking.json")
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.out))
