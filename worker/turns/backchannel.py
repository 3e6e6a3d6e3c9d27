"""Which sounds heard over the agent are a backchannel rather than an interruption.

Words alone are not enough: Whisper writes a short "mm-hmm" as "And then them." or "M" as
often as it writes it right, and a misspelt backchannel must not cut the reply. So the audio
is weighed too: a sound that is short (``max_seconds`` of audio, VAD padding included), has
at most three words, none of them a cue that the caller wants the floor ("wait", "no",
"stop", "sorry", a question word...), and that Whisper itself was unsure of
(``max_confidence``) is a backchannel whatever it was spelt as. Both limits are chosen on
the tuning voices of ``benchmarks/backchannel_signals.py`` and checked on held-back ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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

_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")

CUES = frozenset(
    "wait stop no nope not hold hang sorry excuse pardon what when where which who why how "
    "actually but hey listen question repeat again cancel wrong can could would please "
    "person human".split()
)
"""Words with which a caller takes the floor: a sound with one of these always cuts."""


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class BackchannelPolicy:
    """A caller's words over the agent's reply are a backchannel when every phrase in them is
    on the list ("uh-huh", "yeah okay"), or when there are no words at all (a cough, noise)."""

    def __init__(
        self,
        phrases: Iterable[str] = DEFAULT_BACKCHANNELS,
        *,
        max_seconds: float = 0.7,
        max_confidence: float = 0.3,
    ) -> None:
        normalised = {_normalise(p) for p in phrases if _normalise(p)}
        # longest first, so "all right" is taken whole before "right"
        self._phrases = sorted(normalised, key=len, reverse=True)
        self.max_seconds = max_seconds
        self.max_confidence = max_confidence

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
        return confidence is None or confidence < self.max_confidence

    def _listed(self, text: str) -> bool:
        rest = f" {_normalise(text)} "
        for phrase in self._phrases:
            rest = rest.replace(f" {phrase} ", " ")
            while f" {phrase} " in rest:
                rest = rest.replace(f" {phrase} ", " ")
        return not rest.strip()
