"""livekit's local end-of-turn model with a veto from the words: one per session.

v1-mini hears the last 1.2 s of the caller and says whether the turn sounds finished;
"I'd like to book a table for" often sounds finished to it (a falling pitch, a clean stop).
:class:`TextVetoTurnDetector` keeps the session's latest transcript and, when it ends on a
word after which no English clause ends (:func:`~worker.turns.completeness.sounds_unfinished`),
raises the model's "unlikely" threshold above any probability for that decision, so
livekit-agents waits its maximum delay instead of the minimum, and, through the session's
public ``update_options``, makes that maximum ``turn.text_hold_delay`` for the decision: the
words are surer evidence than the audio, and a caller's resumption takes the VAD ~0.3 s to
notice, so a 1.0 s wait would still answer into a 0.8 s pause. The veto can only hold a
turn, never end one. ``benchmarks/end_of_turn.py`` measured what it buys.

The seam is private: livekit-agents 1.8.9 compares the prediction with
``stream.unlikely_threshold(language)`` of the detector *stream* after every prediction and
reads the maximum delay right after (``audio_recognition._bounce_eou_task``); there is no
public hook for it. This module is the one place that touches it, and
``tests/test_end_of_turn.py`` and ``tests/test_turn_taking.py`` pin the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.agents.inference import TurnDetector

from .completeness import sounds_unfinished

HOLD = 2.0
"""A threshold above any probability: the turn is judged unfinished."""


class TextVetoTurnDetector(TurnDetector):
    """v1-mini, held back by the transcript when the words are plainly mid-sentence."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = ""
        self.held = 0
        """End-of-turn decisions taken while the words said "unfinished" (for the harness)."""
        self._set_max_delay: Callable[[float], None] | None = None
        self._delays = (0.0, 0.0)
        self._current: float | None = None

    def hold_with(
        self, set_max_delay: Callable[[float], None], *, normal: float, held: float
    ) -> None:
        """Let the veto switch the session's maximum delay: ``held`` while the words dangle,
        ``normal`` otherwise (``set_max_delay`` calls the session's ``update_options``)."""
        self._set_max_delay = set_max_delay
        self._delays = (normal, held)
        self._current = normal

    def note(self, text: str) -> None:
        """The session's newest transcript (interim or final) of the caller's current speech."""
        self.text = text

    def _use(self, delay: float) -> None:
        if self._set_max_delay is not None and delay != self._current:
            self._set_max_delay(delay)
            self._current = delay

    def stream(self, **kwargs: Any) -> Any:
        s = super().stream(**kwargs)
        lookup = s.unlikely_threshold

        async def unlikely_threshold(language: Any) -> float | None:
            threshold = await lookup(language)
            normal, held = self._delays
            if threshold is not None and sounds_unfinished(self.text):
                self.held += 1
                self._use(held)
                return HOLD
            self._use(normal)
            return threshold

        s.unlikely_threshold = unlikely_threshold  # type: ignore[method-assign]  # the seam
        return s
