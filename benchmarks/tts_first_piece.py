"""Benchmark: how long Kokoro takes to synthesise a reply's first piece on this machine.

The caller hears nothing until the first piece is synthesised whole (Kokoro gives a piece's
audio at once), so its synthesis time is the TTS share of voice-to-voice. Twelve replies
of the kind the agent gives are cut where the worker cuts them (``early_cut``: the first
clause, or about four words) and each first piece is synthesised warm, ``--runs`` times, in
three voices; beside it the same replies' first six words and whole first sentence, for
what the short cut buys. Each is measured on an idle machine and beside a busy loop at nice
10 on one core, which is where the embedded LLM's generation thread sits while the first
piece is synthesised (docs/settings.md, "Thread budget"). Medians in ms, into
``benchmarks/results/tts_first_piece.json``.

    python benchmarks/tts_first_piece.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins.kokoro.tts import early_cut  # noqa: E402
from worker.models import load_tts  # noqa: E402
from worker.settings import load_settings  # noqa: E402

REPLIES = [
    "Sure, we open at nine tomorrow morning and close at ten in the evening.",
    "I can book that for you. What time would you like to come in?",
    "Yes, we have a vegetarian menu with three starters and four mains.",
    "You're welcome, have a lovely evening and see you on Friday.",
    "Of course. For how many people should I book the table?",
    "I'm sorry, we're fully booked at eight, but seven thirty is free.",
    "Great, a table for four at eight o'clock on Saturday is booked.",
    "We're at twelve Market Street, next to the old cinema.",
    "Let me check that for you, it will only take a moment.",
    "The kitchen closes at half past nine on weekdays.",
    "Could you spell your last name for me, please?",
    "That's no problem at all, I've moved your booking to Sunday.",
]
VOICES = ["af_heart", "am_michael", "bf_emma"]
BUSY = "import os, time\nos.nice(10)\nwhile True:\n    pass\n"


def _pieces() -> dict[str, list[str]]:
    first = []
    for reply in REPLIES:
        cut = early_cut(reply + " ")
        first.append(reply[:cut].strip() if cut else reply)
    return {
        "first piece (as cut)": first,
        "first six words": [" ".join(r.split()[:6]) for r in REPLIES],
        "whole first sentence": [r.split(". ")[0] for r in REPLIES],
    }


def _measure(tts: Any, texts: list[str], runs: int) -> list[float]:
    out = []
    for voice in VOICES:
        for text in texts:
            for _ in range(runs):
                t = time.perf_counter()
                tts.synthesize_pcm(text, voice=voice)
                out.append((time.perf_counter() - t) * 1000)
    return out


def main(runs: int, out: Path) -> None:
    settings = load_settings()
    tts = load_tts(settings)
    for voice in VOICES:  # warm: the ONNX session and each voice's style vectors
        tts.synthesize_pcm("Hello there.", voice=voice)
    pieces = _pieces()
    results: dict[str, Any] = {}
    for load in ("idle", "beside a nice-10 busy core"):
        hog = None
        if load != "idle":
            hog = subprocess.Popen([sys.executable, "-c", BUSY])
            time.sleep(0.5)
        try:
            for name, texts in pieces.items():
                ms = _measure(tts, texts, runs)
                results.setdefault(name, {})[load] = {
                    "median_ms": round(statistics.median(ms), 1),
                    "p90_ms": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 1),
                    "samples": len(ms),
                }
                print(f"{name}, {load}: median {statistics.median(ms):.0f} ms", file=sys.stderr)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    doc = {
        "benchmark": "tts_first_piece",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "tts_threads": settings.tts.threads,
        "voices": VOICES,
        "runs": runs,
        "first_pieces": pieces["first piece (as cut)"],
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print("| piece | words (mean) | idle: median / P90 | beside a nice-10 busy core |")
    print("|---|---|---|---|")
    for name, texts in pieces.items():
        words = statistics.mean(len(t.split()) for t in texts)
        idle, busy = results[name]["idle"], results[name]["beside a nice-10 busy core"]
        print(f"| {name} | {words:.1f} | {idle['median_ms']} / {idle['p90_ms']} ms "
              f"| {busy['median_ms']} / {busy['p90_ms']} ms |")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tts_first_piece.json")
    a = ap.parse_args()
    main(a.runs, a.out)
