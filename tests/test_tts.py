"""Kokoro TTS on the real model: intelligible, streamed sentence by sentence, interruptible."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from livekit.agents import APIConnectionError

from plugins.kokoro import TTS, UnknownVoiceError
from plugins.kokoro.tts import early_cut
from worker.models import load_stt, load_tts
from worker.settings import Settings

from .conftest import word_error_rate

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def module_settings(real_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    d = tmp_path_factory.mktemp("tts")
    (d / "models").symlink_to(real_models_dir, target_is_directory=True)
    return Settings(data_dir=d)


@pytest.fixture(scope="module")
def kokoro(module_settings: Settings) -> TTS:
    return load_tts(module_settings)


async def _collect(tts: TTS, text: str) -> tuple[np.ndarray, float, float]:
    stream = tts.stream()
    t0 = time.perf_counter()
    first = None

    async def feed() -> None:
        for word in text.split(" "):
            stream.push_text(word + " ")
            await asyncio.sleep(0.005)
        stream.end_input()

    feeder = asyncio.create_task(feed())
    chunks = []
    async for ev in stream:
        if first is None:
            first = time.perf_counter() - t0
        assert ev.frame.sample_rate == 24000
        chunks.append(np.frombuffer(ev.frame.data, dtype=np.int16))
    await feeder
    await stream.aclose()
    return np.concatenate(chunks), first or 0.0, time.perf_counter() - t0


async def test_speech_transcribes_back_through_stt(kokoro: TTS, module_settings: Settings) -> None:
    text = "The pharmacy opens at nine in the morning. It closes at six in the evening."
    pcm, _, _ = await _collect(kokoro, text)
    stt = load_stt(module_settings)
    from livekit import rtc

    ev = await stt.recognize([rtc.AudioFrame(pcm.tobytes(), 24000, 1, pcm.size)])
    heard = ev.alternatives[0].text
    assert word_error_rate(text, heard) < 0.25, heard


async def test_first_sentence_audio_arrives_before_the_reply_is_done(kokoro: TTS) -> None:
    text = (
        "Sure thing. The pharmacy opens at nine in the morning on weekdays. On Saturdays it opens "
        "at ten and closes early in the afternoon. On Sundays it stays closed all day."
    )
    pcm, first, total = await _collect(kokoro, text)
    assert pcm.size / 24000 > 6.0
    assert first < total / 3, f"first audio after {first:.2f}s of {total:.2f}s"


async def test_interrupted_synthesis_stops_promptly(kokoro: TTS) -> None:
    stream = kokoro.stream()
    stream.push_text("Okay. " + "This is a long reply that keeps going and going. " * 20)
    stream.end_input()
    got_first = False
    async for _ev in stream:
        got_first = True
        break
    assert got_first
    t0 = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - t0 < 2.0
    # nothing more is synthesised: the shared synthesis thread is free again at once
    t1 = time.perf_counter()
    await kokoro.synthesize_async("Ready.")
    assert time.perf_counter() - t1 < 3.0


def test_unknown_voice_lists_the_valid_ones(module_settings: Settings) -> None:
    bad = module_settings.model_copy(deep=True)
    bad.tts.voice = "zz_nobody"
    with pytest.raises(UnknownVoiceError, match="af_heart") as exc:
        load_tts(bad)
    assert "zz_nobody" in str(exc.value)


def test_the_thread_setting_reaches_the_onnx_session(module_settings: Settings) -> None:
    """`tts.threads` sizes Kokoro's own session (the thread budget), and it still speaks."""
    one = module_settings.model_copy(deep=True)
    one.tts.threads = 1
    tts = load_tts(one)
    options = tts._kokoro.sess.get_session_options()  # the ONNX session inside kokoro-onnx
    assert options.intra_op_num_threads == 1
    assert tts.synthesize_pcm("One thread.").size > 24000 // 4


@pytest.mark.parametrize(
    ("written", "first_piece"),
    [
        ("Sure. We", "Sure."),
        ("I'm sorry, I don't", "I'm sorry,"),
        ("On Thursday we're open from 5 pm", "On Thursday we're open"),
        ("You can book the table for", "You can book the table"),
        ("We are open from", None),  # four words: the next one may still bring a mark
        ("On Thursday", None),
    ],
)
def test_the_first_piece_is_a_short_phrase(written: str, first_piece: str | None) -> None:
    """The reply's first piece ends at an early clause mark or after about four words, never
    on a word like "the" (it would sound broken off), and waits while too few are written."""
    cut = early_cut(written + " ")
    assert (written[:cut].strip() if cut else None) == first_piece


@pytest.mark.parametrize(
    ("written", "first_piece"),
    [
        ("Yes,", "Yes,"),
        ("Sure!", "Sure!"),
        ("We open at noon.", "We open at noon."),
        ("It costs 1,", None),  # "1,500": the next token may go on with the number
        ("It is 3.", None),
        ("Ask for Dr.", None),
        ("I", None),
    ],
)
def test_a_mark_at_the_end_of_the_words_so_far_cuts_at_once(
    written: str, first_piece: str | None
) -> None:
    """The LLM writes "Yes" then ","; the piece is cut on the comma, not one token later when
    the next word shows a space after it, unless the mark may belong to a number or a title."""
    cut = early_cut(written)
    assert (written[:cut].strip() if cut else None) == first_piece


async def test_an_opener_said_before_plays_from_the_piece_cache(
    module_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply opening with a phrase this voice made before is not synthesised again: its
    piece comes from the cache, the same samples synthesis makes, and the rest is made."""
    tts = load_tts(module_settings)  # its own cache
    made: list[str] = []
    synthesize = tts.synthesize_async

    async def counting(text: str, *args: object) -> np.ndarray:
        made.append(text)
        return await synthesize(text)

    monkeypatch.setattr(tts, "synthesize_async", counting)
    openers = ["Sure,", "Sure,", "A piece far too long to be kept here."]
    assert await tts.prepare_pieces(openers) == 1
    assert made == ["Sure,"]
    made.clear()
    pcm, _, _ = await _collect(tts, "Sure, we open at noon on Sundays.")
    assert made and "Sure," not in made, made
    assert tts.pieces.hits == 1
    direct = tts.synthesize_pcm("Sure,")
    assert np.array_equal(pcm[: direct.size], direct)


async def test_no_cached_opener_while_synthesis_fails(
    module_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a synthesis has failed, a reply's cached opener is not played: the reply fails from
    its first piece, so the fallback TTS speaks all of it instead of the caller hearing only
    "Sure,". The cache serves again after the next synthesis that works."""
    tts = load_tts(module_settings)
    assert await tts.prepare_pieces(["Sure,"]) == 1
    synthesize = tts.synthesize_async
    broken = True

    async def flaky(text: str, *args: object) -> np.ndarray:
        if broken:
            raise APIConnectionError("kokoro is down")
        return await synthesize(text)

    monkeypatch.setattr(tts, "synthesize_async", flaky)
    with pytest.raises(APIConnectionError):
        await tts.piece_audio("we open at noon.")
    with pytest.raises(APIConnectionError):  # the opener too, though it is cached
        await tts.piece_audio("Sure,", opening=True)
    assert tts.openings == [1, 0]
    broken = False
    await tts.piece_audio("we open at noon.")
    hits = tts.pieces.hits
    await tts.piece_audio("Sure,", opening=True)
    assert tts.pieces.hits == hits + 1 and tts.openings == [2, 1]


def test_the_piece_cache_keeps_short_pieces_and_forgets_the_oldest() -> None:
    from plugins.kokoro.tts import PieceCache

    cache = PieceCache(max_entries=2, max_words=3)
    one = np.ones(10, np.int16)
    cache.put("v", 1.0, "Sure,", one)
    cache.put("v", 1.0, "Yes,", one)
    cache.put("v", 1.0, "four words are too many", one)
    assert len(cache) == 2
    assert cache.get("v", 1.0, "Sure,") is not None  # now the most recently used
    assert cache.get("w", 1.0, "Sure,") is None and cache.get("v", 1.1, "Sure,") is None
    cache.put("v", 1.0, "Okay.", one)
    assert cache.get("v", 1.0, "Yes,") is None and cache.get("v", 1.0, "Sure,") is not None
    off = PieceCache(max_entries=0)
    off.put("v", 1.0, "Sure,", one)
    assert off.get("v", 1.0, "Sure,") is None
