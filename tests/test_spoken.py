"""What the TTS is given of the LLM's words: markup dropped, nothing held back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from worker.spoken import without_markup


async def _feed(chunks: list[str]) -> list[str]:
    """Push chunks one at a time; record what had come out after each (cumulative)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def source() -> AsyncIterator[str]:
        while (c := await queue.get()) is not None:
            yield c

    out: list[str] = []
    seen: list[str] = []

    async def drain() -> None:
        async for piece in without_markup(source()):
            out.append(piece)

    task = asyncio.create_task(drain())
    for c in chunks:
        await queue.put(c)
        for _ in range(5):  # let the transform run
            await asyncio.sleep(0)
        seen.append("".join(out))
    await queue.put(None)
    await task
    seen.append("".join(out))
    return seen


async def test_a_comma_reaches_the_tts_with_its_own_token() -> None:
    seen = await _feed(["Yes", ",", " I", " can", " help", "."])
    assert seen[:2] == ["Yes", "Yes,"]  # the default markdown filter still held "," here
    assert seen[-1] == "Yes, I can help."


@pytest.mark.parametrize(
    ("chunks", "spoken"),
    [
        (["We open at **", "noon", "** on", " Sunday."], "We open at noon on Sunday."),
        (["## Hours", "\n", "- Monday", ": closed", "\n", "- Tuesday: 5", " pm"],
         "Hours\nMonday: closed\nTuesday: 5 pm"),
        (["1", ".", " Book", " a", " table"], "Book a table"),
        (["It costs `", "12", "` dollars", "."], "It costs 12 dollars."),
        (["> Note", ": we close early."], "Note: we close early."),
        (["5", " pm", " is", " fine."], "5 pm is fine."),
        (["I", "'m", " sorry", "."], "I'm sorry."),
    ],
)  # fmt: skip
async def test_markup_is_dropped_and_the_words_kept(chunks: list[str], spoken: str) -> None:
    assert (await _feed(chunks))[-1] == spoken


async def test_only_the_first_characters_of_a_line_may_wait() -> None:
    seen = await _feed(["Sure", " thing", "\n", "1", ".", " First", " item", " here"])
    assert seen[0] == "Sure" and seen[1] == "Sure thing"
    assert seen[4] == "Sure thing\n"  # "1." might start a list: waits for what follows
    assert seen[5] == "Sure thing\nFirst" and seen[6] == "Sure thing\nFirst item"
