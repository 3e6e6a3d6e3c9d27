"""The LLM's words on their way to speech synthesis, passed on the moment they arrive.

livekit-agents' default ``filter_markdown`` transform holds every token back until the next
space or mark arrives, so it can see whole markdown patterns; the TTS then always sees the
reply one token late, and the reply's first piece ("Yes,") waited ~45 ms for the word after
its comma. A spoken reply needs only the markup characters dropped, which can be done
character by character with nothing held back: emphasis and code marks anywhere, heading
marks, quote marks and list bullets at the start of a line.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

_INLINE = re.compile(r"[*_`~]+")
_LINE_START = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*|>[ \t]*|[-+•][ \t]+|\d{1,2}[.)][ \t]+)")


def strip_line_start(line: str) -> str:
    """A line without the heading, quote or list mark it starts with."""
    return _LINE_START.sub("", line, count=1)


async def without_markup(text: AsyncIterable[str]) -> AsyncIterator[str]:
    """Each chunk as soon as it comes, minus markdown marks (a ``tts_text_transforms`` entry).

    A line's start is judged once its first few characters are in: up to then (at most a
    handful of characters, and only at a line start) the chunk waits, nothing later does.
    """
    pending = ""  # the start of a line, until it is clear whether it carries a mark
    at_line_start = True
    async for chunk in text:
        chunk = _INLINE.sub("", chunk)
        while chunk:
            if not at_line_start:
                head, nl, chunk = chunk.partition("\n")
                if head or nl:
                    yield head + nl
                at_line_start = bool(nl)
                continue
            pending += chunk
            chunk = ""
            line, nl, rest = pending.partition("\n")
            if not nl and len(line.lstrip()) < 4 and not re.search(r"[A-Za-z]{2}", line):
                break  # "1." "- " "##": not yet clear
            pending = ""
            out = strip_line_start(line)
            if out or nl:
                yield out + nl
            at_line_start = bool(nl)
            chunk = rest
    if pending:
        yield strip_line_start(pending)
