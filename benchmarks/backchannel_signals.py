"""Benchmark: which audio signals tell a backchannel from an interruption when the STT
mishears it, chosen on the tuning voices and checked on the held-back ones.

Every caller line of ``callers.py`` (backchannels and real interruptions) is decoded by our
STT as the agent would see it over its own reply: the utterance with the VAD's 0.3 s of
padding before and the 0.1 s of silence after which the early final starts. For each line
the words, Whisper's confidence and the audio's length are kept. Then the barge-in rule is
searched on the tuning voices only: a sound heard over the agent resumes playout when its
words are on the backchannel list, or when it has no interruption cue word, at most three
words, is at most ``max_seconds`` long and Whisper was less sure of it than
``max_confidence``. The pair that resumes the most backchannels while cutting every real
interruption in the tuning set is reported, with both sets' figures, the text-only rule's
beside it, into ``benchmarks/results/backchannels.json``.

    python benchmarks/backchannel_signals.py [--lines 4] [--seed 7] [--rescore]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callers import BACKCHANNELS, INTERRUPTIONS, Band, Corpus, split_of  # noqa: E402

from worker.models import load_stt  # noqa: E402
from worker.settings import load_settings  # noqa: E402
from worker.turns.backchannel import BackchannelPolicy  # noqa: E402

LEAD_S, TAIL_S = 0.3, 0.1
SECONDS = [round(0.6 + 0.1 * i, 1) for i in range(11)]
CONFIDENCES = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]


def _decode_all(lines: int, seed: int) -> list[dict[str, Any]]:
    corpus = Corpus.load()
    stt = load_stt(load_settings())
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    voices = corpus.all_voices()
    started = time.time()
    for n, voice in enumerate(voices, 1):
        picked = [("backchannel", t) for t in rng.sample(BACKCHANNELS, lines)]
        picked += [("interruption", t) for t in rng.sample(INTERRUPTIONS, lines)]
        for kind, text in picked:
            bands: tuple[Band, ...] = ("16k", "8k")
            for band in bands:
                pcm = corpus.render(text, voice, band)
                pad = np.zeros(int(16000 * LEAD_S), np.int16)
                tail = np.zeros(int(16000 * TAIL_S), np.int16)
                audio = np.concatenate([pad, pcm, tail]).astype(np.float32) / 32768.0
                d = stt.decode_pcm(audio)
                out.append(
                    {
                        "voice": voice, "split": split_of(voice), "band": band, "kind": kind,
                        "said": text, "heard": d.text if d else "",
                        "confidence": round(d.confidence, 3) if d else 0.0,
                        "seconds": round(audio.size / 16000, 2),
                    }
                )  # fmt: skip
        print(f"{n}/{len(voices)} voices ({time.time() - started:.0f}s)", file=sys.stderr)
    return out


def _score(rows: list[dict[str, Any]], policy: BackchannelPolicy, **rule: Any) -> dict[str, Any]:
    def resumed(r: dict[str, Any]) -> bool:
        return policy.is_backchannel(r["heard"], seconds=r["seconds"], confidence=r["confidence"])

    bcs = [r for r in rows if r["kind"] == "backchannel"]
    ints = [r for r in rows if r["kind"] == "interruption"]
    return {
        "backchannels_resumed": round(sum(map(resumed, bcs)) / max(1, len(bcs)), 3),
        "interruptions_cut": round(sum(not resumed(r) for r in ints) / max(1, len(ints)), 3),
        "lines": len(rows),
        "missed_interruptions": [
            (r["voice"], r["band"], r["said"], r["heard"]) for r in ints if resumed(r)
        ][:10],
        **rule,
    }


def main(lines: int, seed: int, out: Path, rescore: bool) -> None:
    # --rescore: the same decodes, a changed rule (the decoding is the slow part)
    rows = json.loads(out.read_text())["rows"] if rescore else _decode_all(lines, seed)
    tuning = [r for r in rows if r["split"] == "tuning"]
    held = [r for r in rows if r["split"] == "held-back"]
    text_only = BackchannelPolicy(max_seconds=0.0)
    best: tuple[float, float, float] | None = None
    grid = []
    for sec in SECONDS:
        for conf in CONFIDENCES:
            p = BackchannelPolicy(max_seconds=sec, max_confidence=conf)
            s = _score(tuning, p)
            grid.append({"max_seconds": sec, "max_confidence": conf, **s})
            if s["interruptions_cut"] == 1.0:
                key = (s["backchannels_resumed"], -sec, -conf)
                if best is None or key > best:
                    best = key
    assert best is not None, "no rule cuts every tuning interruption"
    chosen = {"max_seconds": -best[1], "max_confidence": -best[2]}
    policy = BackchannelPolicy(max_seconds=-best[1], max_confidence=-best[2])
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "chosen": chosen,
        "text_only": {"tuning": _score(tuning, text_only), "held_back": _score(held, text_only)},
        "with_audio": {"tuning": _score(tuning, policy), "held_back": _score(held, policy)},
        "per_band_held_back": {
            b: _score([r for r in held if r["band"] == b], policy) for b in ("16k", "8k")
        },
        "grid": grid,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("| rule | set | backchannels resumed | interruptions cut |")
    print("|---|---|---|---|")
    for name in ("text_only", "with_audio"):
        for split in ("tuning", "held_back"):
            r = result[name][split]  # type: ignore[index]
            print(f"| {name} | {split} | {r['backchannels_resumed']:.1%} | "
                  f"{r['interruptions_cut']:.1%} |")  # fmt: skip
    print(f"chosen on the tuning set: {chosen}; wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=4, help="lines of each kind per voice")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rescore", action="store_true", help="reuse the decodes in --out")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/backchannel_signals.json"
    )
    a = ap.parse_args()
    main(a.lines, a.seed, a.out, a.rescore)
