"""livekit's local end-of-turn model with a veto from the words: one per session.

v1-mini hears the last 1.2 s of the caller and says whether the turn sounds finished;
"I'd like to book a table for" often sounds finished to it (a falling pitch, a clean stop).
:class:`TextVetoTurnDetector` keeps the session's latest transcript and, when it ends on a
word after which no English clause ends (:func:`~worker.turns.completeness.sounds_unfinished`),
raises the model's "unlikely" threshold above any probability for that decision, so
livekit-agents waits ``max_delay`` instead of ``min_delay``. The veto can only hold a turn,
never end one. ``benchmarks/end_of_turn.py`` measured what it buys.

The seam is private: livekit-agents 1.8.9 compares the prediction with
``stream.unlikely_threshold(language)`` of the detector *stream* after every prediction
(``audio_recognition._bounce_eou_task``); there is no public hook for it. This module is the
one place that touches it, and ``tests/test_turn_taking.py`` pins the behaviour.
"""

from __future__ import annotations

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

    def note(self, text: str) -> None:
        """The session's newest transcript (interim or final) of the caller's current speech."""
        self.text = text

    def stream(self, **kwargs: Any) -> Any:
        s = super().stream(**kwargs)
        lookup = s.unlikely_threshold

        async def unlikely_threshold(language: Any) -> float | None:
            threshold = await lookup(language)
            if threshold is not None and sounds_unfinished(self.text):
                self.held += 1
                return HOLD
            return threshold

        s.unlikely_threshold = unlikely_threshold  # type: ignore[method-assign]  # the seam
        return s
