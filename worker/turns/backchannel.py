"""Which sounds heard over the agent are a backchannel rather than an interruption.

Words alone are not enough: Whisper writes a short "mm-hmm" as "And then them." or "M" as
often as it writes it right, and a misspelt backchannel must not cut the reply. Three things
help, each measured on the tuning voices of ``benchmarks/backchannel_signals.py`` and
checked on held-back ones:

- the decode over the agent's reply is prompted with ``OVER_REPLY_PROMPT`` (backchannels and
  the short words that take the floor), so Whisper spells either kind as it is said;
- a sound that is short (``max_seconds`` of audio, VAD padding included), has at most three
  words and none of them a cue that the caller wants the floor ("wait", "no", "stop",
  "sorry", a question word...) is a backchannel when its letters are within
  ``max_distance`` (edit distance over length) of a listed phrase: "Mm-hums", "Uh-hi",
  "Righte" sound like one, "Tenon" or "Saturday" do not;
- or when Whisper itself was unsure of it (``max_confidence``; off by default: short
  answers like "Two." or "Tomorrow." come out just as unsure, so this cut too few of them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

DEFAULT_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mm hmm", "mhm", "hmm", "mm", "yeah", "yep", "yes",
    "okay", "ok", "right", "sure", "alright", "all right", "i see", "got it", "cool",
    # Whisper often writes a spoken "uh-huh" as "uh-uh"; over the agent's speech a lone
    # "uh-uh" is far likelier an acknowledgement than a refusal
    "uh-uh", "uh uh",
    # chosen from the tuning voices' misses (benchmarks/backchannel_signals.py): "oh" before
    # an acknowledgement, laughter, and a humming "mhm" spelt out as letters or half-words
    "oh", "ah", "ha", "haha", "hah", "m h m", "m", "mm hum", "m hum",
)  # fmt: skip

OVER_REPLY_PROMPT = "Mm-hmm. Uh-huh. Yeah. Right. Okay. Wait. Stop. No."
"""What Whisper reads as said before a sound heard over the agent's reply: both kinds of
short answer, so that neither the backchannel nor the floor-taking word is favoured."""

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
"""Digits are words too: Whisper writes a spoken "Two." as "2", which is an answer."""

CUES = frozenset(
    "wait stop no nope not hold hang sorry excuse pardon what when where which who why how "
    "actually but hey listen question repeat again cancel wrong can could would please "
    "person human".split()
)
"""Words with which a caller takes the floor: a sound with one of these always cuts."""


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@lru_cache(maxsize=4096)
def _nearest(heard: str, spellings: tuple[str, ...]) -> float:
    """Edit distance over the longer length, to the nearest of ``spellings`` that starts
    with the same letter (a misspelt backchannel keeps its onset, "Mm-hums", "Uh-hi"; a
    word that merely rhymes with one, "Eight" and "right", does not). Cached: the same few
    sounds are asked about again and again."""
    near = [
        _edit_distance(heard, s) / max(len(heard), len(s)) for s in spellings if s[0] == heard[0]
    ]
    return min(near, default=1.0)


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class BackchannelPolicy:
    """A caller's words over the agent's reply are a backchannel when every phrase in them is
    on the list ("uh-huh", "yeah okay"), or when there are no words at all (a cough, noise)."""

    def __init__(
        self,
        phrases: Iterable[str] = DEFAULT_BACKCHANNELS,
        *,
        max_seconds: float = 1.5,
        max_confidence: float = 0.0,
        max_distance: float = 0.45,
        prompt: str | None = None,
    ) -> None:
        normalised = {_normalise(p) for p in phrases if _normalise(p)}
        # longest first, so "all right" is taken whole before "right"
        self._phrases = sorted(normalised, key=len, reverse=True)
        # what each sounds like, said once or twice ("yeah yeah"), letters only
        self._spellings = tuple(
            sorted({_letters(p) * n for p in normalised for n in (1, 2)} - {""})
        )
        self.max_seconds = max_seconds
        self.max_confidence = max_confidence
        self.max_distance = max_distance
        self.prompt = prompt or None
        """What the STT should read before a sound heard over the reply (``OVER_REPLY_PROMPT``
        in the worker; ``None``: decode as any other)."""

    def distance(self, text: str) -> float:
        """How far the words' letters are from the nearest listed phrase with the same first
        letter: 0 is a listed spelling, 1 none alike (edit distance over the longer length)."""
        heard = _letters(text)
        if not heard or not self._spellings:
            return 0.0 if not heard else 1.0
        return _nearest(heard, self._spellings)

    def is_backchannel(
        self, text: str, *, seconds: float | None = None, confidence: float | None = None
    ) -> bool:
        """``seconds`` and ``confidence`` come with the STT's transcript when it knows them
        (our Whisper STT does; without them only the words count)."""
        if self._listed(text):
            return True
        if seconds is None or seconds <= 0 or seconds > self.max_seconds:
            return False
        words = _normalise(text).split()
        if len(words) > 3 or any(w in CUES for w in words):
            return False
        if self.max_distance > 0 and self.distance(text) <= self.max_distance:
            return True
        return confidence is not None and confidence < self.max_confidence

    def _listed(self, text: str) -> bool:
        rest = f" {_normalise(text)} "
        for phrase in self._phrases:
            rest = rest.replace(f" {phrase} ", " ")
            while f" {phrase} " in rest:
                rest = rest.replace(f" {phrase} ", " ")
        return not rest.strip()
