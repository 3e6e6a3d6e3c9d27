"""Which words heard over the agent are a backchannel rather than an interruption."""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mm hmm", "mhm", "hmm", "mm", "yeah", "yep", "yes",
    "okay", "ok", "right", "sure", "alright", "all right", "i see", "got it", "cool",
    # Whisper often writes a spoken "uh-huh" as "uh-uh"; over the agent's speech a lone
    # "uh-uh" is far likelier an acknowledgement than a refusal
    "uh-uh", "uh uh",
)  # fmt: skip

_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class BackchannelPolicy:
    """A caller's words over the agent's reply are a backchannel when every phrase in them is
    on the list ("uh-huh", "yeah okay"), or when there are no words at all (a cough, noise)."""

    def __init__(self, phrases: Iterable[str] = DEFAULT_BACKCHANNELS) -> None:
        normalised = {_normalise(p) for p in phrases if _normalise(p)}
        # longest first, so "all right" is taken whole before "right"
        self._phrases = sorted(normalised, key=len, reverse=True)

    def is_backchannel(self, text: str) -> bool:
        rest = f" {_normalise(text)} "
        for phrase in self._phrases:
            rest = rest.replace(f" {phrase} ", " ")
            while f" {phrase} " in rest:
                rest = rest.replace(f" {phrase} ", " ")
        return not rest.strip()
