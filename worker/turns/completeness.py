"""Does a transcript read like a finished turn? A text signal beside the audio end-of-turn model.

The audio models hear prosody; they cannot know that "a table for" needs a noun. This rule
reads the STT's words and says *unfinished* only on closed-class evidence that holds for any
speaker: the last word is a filler ("um", "uh"), an article, a preposition, a conjunction, a
possessive, or a subject or copula that hardly ends an English clause ("I'd like to book a
table for", "my name is", "and"), or Whisper marked the break itself ("...", a trailing
comma or dash). Everything else is left to the audio model, so the rule can only hold a
turn, never end one. Digits are not judged: "five five five" may be a whole answer.
"""

from __future__ import annotations

import re

FILLERS = frozenset("um umm uh uhh er erm".split())
"""Sounds said while thinking: the caller means to go on."""

_DANGLING = frozenset(
    # articles, determiners and possessives
    "a an the my your his our their its every "
    # prepositions
    "for to of on at by with from into onto than as until till between through during "
    "without per via "
    # conjunctions and clause openers
    "and or but because if when while although whether plus "
    # subjects and auxiliaries that need what follows
    "i we they it's i'm we're you're they're i'd we'd i'll we'll i've we've "
    "is are was were".split()
)  # fmt: skip
"""Words after which an English clause hardly ends. Left out on purpose, because a caller's
turn often ends on them: "that", "this", "some", "then", "so", "in", "over", "do", "can",
"will", "need", "want", "like", question words ("What?") and "no"."""

_ENDS_ANYWAY = frozenset(
    "hold on|hang on|come on|go on|carry on|and so on|log on|turn on|switch on|count me in|"
    "what for|who for|what with|what of|what to|thank you|as well as".split("|")
)
"""Phrases that end on a dangling word and are whole."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_TRAILING_BREAK = re.compile(r"(\.\.\.|…|,|-|–|—)\s*$")


def sounds_unfinished(text: str) -> bool:
    """True when the words show the caller is mid-sentence; False when they do not say."""
    stripped = text.strip()
    if not stripped:
        return False
    if _TRAILING_BREAK.search(stripped):
        return True
    words = _WORD.findall(stripped.lower())
    if not words:
        return False
    tail = " ".join(words[-3:])
    if any(tail == p or tail.endswith(" " + p) for p in _ENDS_ANYWAY):
        return False
    return words[-1] in FILLERS or words[-1] in _DANGLING
