"""Benchmark: which end-of-turn signal tells a finished turn from a mid-sentence pause, on
many callers at 16 kHz and 8 kHz, and which endpointing delays that allows per transport.

Each caller of ``callers.py`` says a few lines of three kinds:

- *complete*: a whole turn ("Saturday at eight.");
- *cut*: a whole sentence rendered in one go and cut after a word where a caller might stop
  to think ("I'd like to book a table for | four people on Friday."), so the first half keeps
  the running prosody of a sentence that goes on (the cut point comes from Whisper's word
  timestamps on the full rendering);
- *hesitation*: a phrase that trails off on a filler ("The name is, uh").

Every line gets 0.2 s of near-silence after it: livekit-agents asks its end-of-turn model at
200 ms of VAD silence, and so is every signal here. Scored: livekit's local audio model
``v1-mini`` (the last 1.2 s; its English threshold 0.36), Smart Turn v3.2 (the last 8 s; its
threshold 0.5), the text rule of ``worker/turns/completeness.py`` on our STT's transcript, and
each audio model with the text rule (held when either says "unfinished").

A turn judged finished is committed ``min_delay`` after the caller's last word, one the audio
model judges unfinished ``max_delay`` after it, one the words hold ``turn.text_hold_delay``
(1.5 s) after it. So on a complete line the cost of a miss is the extra wait; on a cut or
hesitation line the agent answers into the pause when the pause plus the VAD's lag in
noticing the caller go on (``ONSET_S``, 0.3 s) reaches the delay chosen. The delay table is
chosen on the tuning voices, reported on the held-back voices.

    python benchmarks/end_of_turn.py [--lines 4] [--rescore]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callers import Band, Corpus, split_of  # noqa: E402

from worker import assets  # noqa: E402
from worker.models import load_stt  # noqa: E402
from worker.settings import TurnSettings, load_settings  # noqa: E402
from worker.turns.completeness import sounds_unfinished  # noqa: E402

RATE = 16000
SILENCE_S = 0.2  # livekit-agents' MIN_SILENCE_DURATION_MS before its EOT prediction
V1_THRESHOLD = 0.36  # livekit-agents' local English threshold for v1-mini
SMART_THRESHOLD = 0.5
PAUSES = [0.4, 0.5, 0.6, 0.7, 0.8, 1.0]  # mid-sentence and thinking pauses (s)
MIN_DELAYS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # the prediction itself comes at 0.2 s
MAX_DELAYS = [0.8, 1.0, 1.2, 1.5]
_TURN = TurnSettings()
DEFAULT_DELAYS = (_TURN.min_endpointing_delay, _TURN.max_endpointing_delay)
TEXT_HOLD = _TURN.text_hold_delay
ONSET_S = 0.3
"""How long the session's VAD takes to report a caller going on after a pause: in the harness
a caller resuming 0.7 s into a pause was not noticed before a 1.0 s commit."""

COMPLETE = [
    "What time do you open on Sunday?", "I'd like to book a table for four people.",
    "Yes, that's right.", "No, thank you.", "Saturday at eight.",
    "Can I speak to a person, please?", "That's all, thanks.",
    "Do you have any vegetarian dishes?", "My name is Maria Lopez.", "Great, see you then.",
    "I want to move my booking to Friday.", "How much is the set menu?", "Just two of us.",
    "My number is five five five, two one three four.", "Is there parking near you?",
    "Could you repeat the address?",
]  # fmt: skip
CUT = [
    ("I'd like to book a table for four people on Friday.", 7),
    ("My name is Daniel Okafor.", 3),
    ("We were hoping to come in on Saturday evening.", 4),
    ("Could you tell me whether the kitchen is open late?", 4),
    ("I need to change the time of my reservation.", 7),
    ("My phone number is five five five, eight two one nine.", 7),
    ("Is it possible to bring a dog to the terrace?", 4),
    ("And we will need a high chair for the baby.", 3),
    ("The booking is under the name of Chen.", 7),
    ("I was wondering if you have a table by the window.", 4),
    ("We are celebrating a birthday, so something quiet would be nice.", 5),
    ("Actually I think we need a bigger table for six.", 5),
    ("Can you send the confirmation to my email address?", 6),
    ("Do you have anything available around seven thirty tonight?", 4),
    ("It's for my mother's seventieth birthday next week.", 3),
    ("I'd prefer the earlier slot if that's still free.", 5),
]
HESITATION = [
    "I'd like to book, um", "So, uh", "The name is, uh", "Let me think, um",
    "We'd like a table for, um", "It's, uh", "My number is five five five, um", "And, um",
]  # fmt: skip


def _cache_dir() -> Path:
    d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voice-worker/eot"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _rendered(corpus: Corpus, text: str, voice: str, band: Band) -> np.ndarray:
    key = hashlib.sha1(f"{voice}|{band}|{text}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"{key}.npy"
    if path.exists():
        return np.load(path)
    pcm = corpus.render(text, voice, band)
    np.save(path, pcm)
    return pcm


_DIGITS = "zero one two three four five six seven eight nine".split()


def _joined(text: str) -> str:
    """Letters only, digits spelt out: "555, two" and "five five five two" compare equal."""
    out = []
    for c in text.lower():
        if c.isdigit():
            out.append(_DIGITS[int(c)])
        elif c.isalpha():
            out.append(c)
    return "".join(out)


def _cut_point(model: Any, stt: Any, pcm: np.ndarray, text: str, k: int) -> float | None:
    """Seconds into ``pcm`` just after its k-th word, or None when no cut could be checked.

    Whisper's word timestamps only place the boundary roughly (tiny.en often ends a word
    inside the next one), so the quietest 10 ms points around it are tried, quietest first,
    and the first whose audio our STT hears as exactly the first k words is kept.
    """
    segs, _ = model.transcribe(
        pcm.astype(np.float32) / 32768.0, language="en", word_timestamps=True, beam_size=1
    )
    words = [w for s in segs for w in (s.words or [])]
    if len(words) <= k:
        return None
    lo, hi = words[k - 1].start, words[min(k, len(words) - 1)].end
    hop = RATE // 100
    frames = pcm[: pcm.size // hop * hop].astype(np.float32).reshape(-1, hop)
    rms = np.sqrt((frames**2).mean(axis=1))
    idx = [i for i in range(int(lo * 100) + 1, min(int(hi * 100), rms.size - 1))]
    minima = [i for i in idx if rms[i] <= rms[i - 1] and rms[i] <= rms[i + 1]]
    want = _joined(" ".join(text.split()[:k]))
    for i in sorted(minima, key=lambda i: rms[i])[:8]:
        cut = pcm[: i * hop]
        audio = np.concatenate([cut, np.zeros(RATE // 5, np.int16)]).astype(np.float32)
        d = stt.decode_pcm(audio / 32768.0)
        if d is not None and _joined(d.text) == want:
            return i / 100
    return None


def _tail(rng: np.random.Generator) -> np.ndarray:
    """0.2 s of a quiet line (about -60 dBFS), not digital zero."""
    return (rng.standard_normal(int(RATE * SILENCE_S)) * 30).astype(np.int16)


def _collect(lines: int, only: int) -> list[dict[str, Any]]:
    from livekit.local_inference import EOT

    from plugins.smart_turn import SmartTurn

    settings = load_settings()
    corpus = Corpus.load()
    stt = load_stt(settings)
    whisper = stt._model  # the loaded faster-whisper model, for word timestamps
    eot = EOT()
    smart = SmartTurn(assets.resolve("smart-turn", settings.models_dir))
    rng = np.random.default_rng(3)
    rows: list[dict[str, Any]] = []
    voices = corpus.all_voices()
    if only:
        voices = voices[:: max(1, len(voices) // only)][:only]
    started = time.time()
    for n, voice in enumerate(voices):
        picks: list[tuple[str, str, int]] = []
        picks += [("complete", COMPLETE[(n * lines + i) % len(COMPLETE)], 0) for i in range(lines)]
        for i in range(lines):
            text, k = CUT[(n * lines + i) % len(CUT)]
            picks.append(("cut", text, k))
        picks += [("hesitation", HESITATION[(n * 2 + i) % len(HESITATION)], 0) for i in range(2)]
        for kind, text, k in picks:
            cut_s: float | None = None
            if kind == "cut":
                full = _rendered(corpus, text, voice, "16k")
                cut_s = _cut_point(whisper, stt, full, text, k)
                if cut_s is None:
                    rows.append({"voice": voice, "kind": kind, "said": text, "skipped": True})
                    continue
            for band in ("16k", "8k"):
                pcm = _rendered(corpus, text, voice, band)  # type: ignore[arg-type]
                if cut_s is not None:
                    pcm = pcm[: int(cut_s * RATE)]
                audio = np.concatenate([pcm, _tail(rng)])
                t0 = time.perf_counter()
                p_v1 = float(eot.predict(audio[-19200:]))
                t1 = time.perf_counter()
                p_smart = smart.predict(audio)
                t2 = time.perf_counter()
                # what the STT's early final decodes: VAD padding, the speech, 0.1 s after
                lead = np.zeros(int(RATE * 0.3), np.int16)
                decode = np.concatenate([lead, audio[: pcm.size + int(RATE * 0.1)]])
                d = stt.decode_pcm(decode.astype(np.float32) / 32768.0)
                rows.append(
                    {
                        "voice": voice, "split": split_of(voice), "band": band, "kind": kind,
                        "said": " ".join(text.split()[:k]) if k else text,
                        "heard": d.text if d else "", "v1": round(p_v1, 4),
                        "smart": round(p_smart, 4), "v1_ms": round((t1 - t0) * 1000, 1),
                        "smart_ms": round((t2 - t1) * 1000, 1),
                    }
                )  # fmt: skip
        print(f"{n + 1}/{len(voices)} voices ({time.time() - started:.0f}s)", file=sys.stderr)
    return rows


Verdict = Callable[[dict[str, Any]], str]
"""How a signal decides a line: "fast" (finished: ``min_delay``), "hold" (the audio model says
unfinished: ``max_delay``) or "words" (the words say unfinished: ``turn.text_hold_delay``)."""


def _signals(v1_t: float, smart_t: float) -> dict[str, Verdict]:
    def with_words(audio_done: Callable[[dict[str, Any]], bool]) -> Verdict:
        def verdict(r: dict[str, Any]) -> str:
            if sounds_unfinished(r["heard"]):
                return "words"
            return "fast" if audio_done(r) else "hold"

        return verdict

    def audio(done: Callable[[dict[str, Any]], bool]) -> Verdict:
        return lambda r: "fast" if done(r) else "hold"

    return {
        "vad only": lambda r: "fast",
        "v1-mini": audio(lambda r: r["v1"] >= v1_t),
        "smart-turn v3.2": audio(lambda r: r["smart"] >= smart_t),
        "text rule": with_words(lambda r: True),
        "v1-mini + text": with_words(lambda r: r["v1"] >= v1_t),
        "smart-turn + text": with_words(lambda r: r["smart"] >= smart_t),
        # the two models together: either sure enough, or both agreeing
        "(v1-mini or smart-turn >= 0.9) + text": with_words(
            lambda r: r["v1"] >= v1_t or r["smart"] >= 0.9
        ),
        "v1-mini and smart-turn + text": with_words(
            lambda r: r["v1"] >= v1_t and r["smart"] >= smart_t
        ),
    }


def _score(
    rows: list[dict[str, Any]], verdict: Verdict, lo: float, hi: float, words: float = TEXT_HOLD
) -> dict[str, Any]:
    """Rates, the mean wait on complete turns and the cut-offs over the pauses. A pause of p
    seconds is answered when p plus the VAD's onset lag reaches the delay the verdict chose."""
    delay = {"fast": lo, "hold": hi, "words": words}
    comp = [verdict(r) for r in rows if r["kind"] == "complete"]
    inc = [verdict(r) for r in rows if r["kind"] != "complete"]
    wait = statistics.fmean(delay[v] for v in comp) if comp else 0.0

    def cut_offs(pauses: list[float]) -> float:
        n = sum(p + ONSET_S > delay[v] for v in inc for p in pauses)
        return n / max(1, len(inc) * len(pauses))

    return {
        "complete_answered_fast": round(comp.count("fast") / max(1, len(comp)), 3),
        "unfinished_held": round(sum(v != "fast" for v in inc) / max(1, len(inc)), 3),
        "mean_wait_s": round(wait, 3),
        "cut_offs_pauses_to_0.8s": round(cut_offs([p for p in PAUSES if p <= 0.8]), 3),
        "cut_offs_all_pauses": round(cut_offs(PAUSES), 3),
        "lines": len(rows),
    }


def _best_threshold(rows: list[dict[str, Any]], key: str) -> float:
    """The threshold with the best balanced accuracy on these rows."""
    comp = np.array([r[key] for r in rows if r["kind"] == "complete"])
    inc = np.array([r[key] for r in rows if r["kind"] != "complete"])
    best = (0.0, 0.5)
    for t in np.linspace(0.02, 0.98, 49):
        acc = ((comp >= t).mean() + (inc < t).mean()) / 2
        if acc > best[0]:
            best = (float(acc), float(t))
    return round(best[1], 2)


def _delays(rows: list[dict[str, Any]], done: Verdict, target: float) -> dict[str, Any]:
    """The (min, max) delay pair with the shortest wait whose cut-offs stay under target;
    when none does, the pair with the fewest cut-offs."""
    grid = [(lo, hi, _score(rows, done, lo, hi)) for lo in MIN_DELAYS for hi in MAX_DELAYS]
    ok = [g for g in grid if g[2]["cut_offs_pauses_to_0.8s"] <= target]
    if ok:
        lo, hi, s = min(ok, key=lambda g: (g[2]["mean_wait_s"], g[2]["cut_offs_all_pauses"]))
    else:
        lo, hi, s = min(grid, key=lambda g: (g[2]["cut_offs_pauses_to_0.8s"], g[2]["mean_wait_s"]))
    return {"min_delay": lo, "max_delay": hi, "meets_target": bool(ok), **s}


def main(lines: int, out: Path, rescore: bool, target: float, only: int) -> None:
    if rescore:
        rows = json.loads(out.read_text())["rows"]
    else:
        rows = _collect(lines, only)
    kept = [r for r in rows if not r.get("skipped")]
    tuning = [r for r in kept if r["split"] == "tuning"]
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "skipped_cuts": sum(1 for r in rows if r.get("skipped")),
        "ms_per_decision": {
            k: round(statistics.median(r[f"{k}_ms"] for r in kept), 1) for k in ("v1", "smart")
        },
        "default_delays": {"min": DEFAULT_DELAYS[0], "max": DEFAULT_DELAYS[1], "words": TEXT_HOLD},
        "thresholds_tuned": {
            "v1-mini": _best_threshold(tuning, "v1"),
            "smart-turn v3.2": _best_threshold(tuning, "smart"),
        },
    }
    table: list[dict[str, Any]] = []
    for thresholds in ("shipped", "tuned"):
        if thresholds == "shipped":
            v1_t, sm_t = V1_THRESHOLD, SMART_THRESHOLD
        else:
            v1_t = result["thresholds_tuned"]["v1-mini"]
            sm_t = result["thresholds_tuned"]["smart-turn v3.2"]
        for name, done in _signals(v1_t, sm_t).items():
            if thresholds == "tuned" and ("+" in name or name in ("vad only", "text rule")):
                continue
            for band in ("16k", "8k"):
                for split in ("tuning", "held-back"):
                    sel = [r for r in kept if r["band"] == band and r["split"] == split]
                    table.append(
                        {"signal": name, "thresholds": thresholds, "band": band,
                         "split": split, **_score(sel, done, *DEFAULT_DELAYS)}
                    )  # fmt: skip
    result["table"] = table
    chosen: dict[str, Any] = {}
    v1_t, sm_t = V1_THRESHOLD, SMART_THRESHOLD
    for name, done in _signals(v1_t, sm_t).items():
        for band in ("16k", "8k"):
            tune = [r for r in tuning if r["band"] == band]
            pick = _delays(tune, done, target)
            held = [r for r in kept if r["band"] == band and r["split"] == "held-back"]
            chosen[f"{name} @ {band}"] = {
                "tuning": pick,
                "held_back": _score(held, done, pick["min_delay"], pick["max_delay"]),
            }
    result["delays"] = chosen
    result["rows"] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _print(result)
    print(f"wrote {out}")


def _print(result: dict[str, Any]) -> None:
    print(f"ms per decision (median): {result['ms_per_decision']}; "
          f"thresholds tuned on the tuning set: {result['thresholds_tuned']}")  # fmt: skip
    print("| signal | thresholds | band | set | complete answered at 0.4 s | unfinished held "
          "| mean wait | cut-offs, pauses 0.4-0.8 s | lines |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["table"]:
        print(f"| {r['signal']} | {r['thresholds']} | {r['band']} | {r['split']} "
              f"| {r['complete_answered_fast']:.0%} | {r['unfinished_held']:.0%} "
              f"| {r['mean_wait_s']:.2f} s | {r['cut_offs_pauses_to_0.8s']:.0%} "
              f"| {r['lines']} |")  # fmt: skip
    print("\n| signal @ band | delays chosen on tuning | held-back: mean wait | cut-offs <=0.8 s "
          "| cut-offs <=1.0 s |")  # fmt: skip
    print("|---|---|---|---|---|")
    for k, v in result["delays"].items():
        t, h = v["tuning"], v["held_back"]
        print(f"| {k} | {t['min_delay']}/{t['max_delay']} s"
              f"{'' if t['meets_target'] else ' (target missed)'} | {h['mean_wait_s']:.2f} s "
              f"| {h['cut_offs_pauses_to_0.8s']:.0%} "
              f"| {h['cut_offs_all_pauses']:.0%} |")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=4, help="complete and cut lines per voice")
    ap.add_argument("--voices", type=int, default=0, help="a spread of this many voices (0: all)")
    ap.add_argument("--rescore", action="store_true", help="reuse the scores in --out")
    ap.add_argument(
        "--target", type=float, default=0.05, help="most cut-offs allowed in pauses <= 0.8 s"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/end_of_turn.json")
    a = ap.parse_args()
    main(a.lines, a.out, a.rescore, a.target, a.voices)
