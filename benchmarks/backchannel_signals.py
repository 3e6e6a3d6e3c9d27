"""Benchmark: which signals tell a backchannel from an interruption when the STT mishears
it, chosen on the tuning voices and checked on the held-back ones.

Every caller line of ``callers.py`` (backchannels and real interruptions, among them short
answers with no cue word) is decoded by our STT as the agent would see it over its own
reply: the utterance with the VAD's 0.3 s of padding before and the 0.1 s of silence after
which the early final starts, once plain and once with ``OVER_REPLY_PROMPT`` (what the
worker does while its reply plays). For each line the words, Whisper's confidence and the
audio's length are kept. Then the barge-in rule is searched on the tuning voices only: a
sound heard over the agent resumes playout when its words are on the backchannel list, or
when it has no interruption cue word, at most three words, is at most ``max_seconds`` long
and either sounds like a listed phrase (``max_distance``) or Whisper was less sure of it
than ``max_confidence``. ``max_seconds`` is where 95% of the tuning backchannels fit; of
the rest, the rule that resumes the most tuning backchannels without letting through an
interruption more than the words alone do, nor any of ``ANSWERS``, is reported with both
sets' figures, beside the words alone (plain and prompted) and the previous rule, into
``benchmarks/results/backchannel_signals.json``.

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
from worker.turns.backchannel import OVER_REPLY_PROMPT, BackchannelPolicy  # noqa: E402

LEAD_S, TAIL_S = 0.3, 0.1
SECONDS = [0.0] + [round(0.6 + 0.1 * i, 1) for i in range(11)]
DISTANCES = [0.0, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6]
CONFIDENCES = [0.0, 0.3, 0.5, 0.7, 1.01]
ANSWERS = (
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
    "monday tuesday wednesday thursday friday saturday sunday january march may june july "
    "noon tonight today tomorrow morning evening later early late now soon both either "
    "neither maybe never always here there home work inside outside window fish soup pasta "
    "salad cash card email text smith john anna sam"
).split()
"""Short answers a caller gives over the agent's question: whatever the limits, none may
sound enough like a backchannel to resume playout (this bounds ``max_distance``, which the
recorded interruptions alone barely constrain)."""
PREVIOUS = {"max_seconds": 0.7, "max_confidence": 0.3, "max_distance": 0.0}
"""The rule before this benchmark looked at prompts and spellings (plain decodes)."""


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
                plain = stt.decode_pcm(audio)
                d = stt.decode_pcm(audio, prompt=OVER_REPLY_PROMPT)
                out.append(
                    {
                        "voice": voice, "split": split_of(voice), "band": band, "kind": kind,
                        "said": text, "heard": d.text if d else "",
                        "confidence": round(d.confidence, 3) if d else 0.0,
                        "heard_plain": plain.text if plain else "",
                        "confidence_plain": round(plain.confidence, 3) if plain else 0.0,
                        "seconds": round(audio.size / 16000, 2),
                    }
                )  # fmt: skip
        print(f"{n}/{len(voices)} voices ({time.time() - started:.0f}s)", file=sys.stderr)
    return out


def _score(
    rows: list[dict[str, Any]], policy: BackchannelPolicy, *, plain: bool = False, **rule: Any
) -> dict[str, Any]:
    """Resumed and cut shares under ``policy``, on the prompted decodes or the ``plain`` ones."""
    sfx = "_plain" if plain else ""

    def resumed(r: dict[str, Any]) -> bool:
        return policy.is_backchannel(
            r["heard" + sfx], seconds=r["seconds"], confidence=r["confidence" + sfx]
        )

    bcs = [r for r in rows if r["kind"] == "backchannel"]
    ints = [r for r in rows if r["kind"] == "interruption"]
    return {
        "backchannels_resumed": round(sum(map(resumed, bcs)) / max(1, len(bcs)), 3),
        "interruptions_cut": round(sum(not resumed(r) for r in ints) / max(1, len(ints)), 3),
        "lines": len(rows),
        "missed_interruptions": [
            (r["voice"], r["band"], r["said"], r["heard" + sfx]) for r in ints if resumed(r)
        ][:10],
        "missed_backchannels": [
            (r["voice"], r["band"], r["said"], r["heard" + sfx]) for r in bcs if not resumed(r)
        ][:40],
        **rule,
    }


def main(lines: int, seed: int, out: Path, rescore: bool) -> None:
    # --rescore: the same decodes, a changed rule (the decoding is the slow part)
    rows = json.loads(out.read_text())["rows"] if rescore else _decode_all(lines, seed)
    if not rescore:  # the decodes first, so a failure below never costs them
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows}, indent=1))
    tuning = [r for r in rows if r["split"] == "tuning"]
    held = [r for r in rows if r["split"] == "held-back"]
    words_only = BackchannelPolicy(max_seconds=0.0)
    previous = BackchannelPolicy(**PREVIOUS)
    # a sound misheard as a listed phrase resumes under any rule: the audio signals must not
    # let through a single interruption more than the words alone do
    floor = _score(tuning, words_only)["interruptions_cut"]
    # how long a backchannel is: 95% of the tuning ones fit (padding included)
    bc_seconds = sorted(r["seconds"] for r in tuning if r["kind"] == "backchannel")
    p95 = bc_seconds[int(0.95 * (len(bc_seconds) - 1))]
    limit_s = min((x for x in SECONDS if x >= p95), default=SECONDS[-1])
    best: tuple[float, ...] | None = None
    grid = []
    for sec in SECONDS:
        for dist in DISTANCES:
            for conf in CONFIDENCES:
                p = BackchannelPolicy(max_seconds=sec, max_distance=dist, max_confidence=conf)
                s = _score(tuning, p)
                swallowed = [a for a in ANSWERS if p.is_backchannel(a, seconds=1.0, confidence=1.0)]
                rule = {"max_seconds": sec, "max_distance": dist, "max_confidence": conf}
                grid.append(
                    {**rule, **{k: v for k, v in s.items() if not k.startswith("missed")},
                     "answers_resumed": swallowed}
                )  # fmt: skip
                if sec == limit_s and s["interruptions_cut"] >= floor and not swallowed:
                    # the most resumed; on a tie, the tightest limits
                    key = (s["backchannels_resumed"], -sec, -dist, -conf)
                    if best is None or key > best:
                        best = key
    assert best is not None  # distance and confidence 0 are the words alone
    chosen = {"max_seconds": -best[1], "max_distance": -best[2], "max_confidence": -best[3]}
    policy = BackchannelPolicy(**chosen)

    def both(p: BackchannelPolicy, plain: bool = False) -> dict[str, Any]:
        return {"tuning": _score(tuning, p, plain=plain), "held_back": _score(held, p, plain=plain)}

    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "prompt": OVER_REPLY_PROMPT,
        "chosen": chosen,
        "backchannel_seconds_p95": p95,
        "rules": {
            "words alone, plain decode": both(words_only, plain=True),
            f"previous rule {PREVIOUS}, plain decode": both(previous, plain=True),
            "words alone, prompted decode": both(words_only),
            "chosen rule, prompted decode": both(policy),
        },
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
    for name, sets in result["rules"].items():  # type: ignore[attr-defined]
        for split in ("tuning", "held_back"):
            r = sets[split]
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
