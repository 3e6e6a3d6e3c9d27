"""Benchmark: SNAC decoding for Orpheus on this machine (random weights of the real shape).

Prints and writes the decode real-time factor per window (seconds of compute per second of
audio) and the first-audio latency of the decode path (the first four-frame window), as
medians over several runs, with a single-frame decode as the baseline in the same process.

    python benchmarks/orpheus_decode.py [--runs 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins.orpheus.decoder import (  # noqa: E402
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    WINDOW_FRAMES,
    WindowDecoder,
    random_snac,
)

FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE  # audio one frame of seven codes carries


def main(runs: int, device: str, out: Path) -> None:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    decode = WindowDecoder(random_snac(), device)
    rng = np.random.default_rng(0)
    frames = [[int(x) for x in rng.integers(0, 4096, 7)] for _ in range(WINDOW_FRAMES)]
    decode(frames)  # warm-up
    window, single = [], []
    for _ in range(runs):
        t = time.perf_counter()
        decode(frames)
        window.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode(frames[:1])
        single.append(time.perf_counter() - t)
    w, s = statistics.median(window), statistics.median(single)
    doc = {
        "benchmark": "orpheus_decode",
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "runs": runs,
        "window_decode_ms_p50": round(w * 1000, 1),
        "single_frame_decode_ms_p50": round(s * 1000, 1),
        "window_over_single": round(w / s, 2),
        # each new frame costs one window decode and yields one frame of final audio
        "decode_rtf": round(w / FRAME_S, 2),
        "frame_audio_ms": round(FRAME_S * 1000, 1),
        "first_audio_decode_ms": round(w * 1000, 1),
        "tokens_per_second_needed": round(7 / FRAME_S, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for k, v in doc.items():
        if k not in ("machine",):
            print(f"{k}: {v}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/orpheus_decode.json")
    a = p.parse_args()
    main(a.runs, a.device, a.out)
