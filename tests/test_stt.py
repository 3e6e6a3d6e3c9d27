"""faster-whisper STT on the real tiny.en model with espeak-ng caller audio."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt as lkstt

from plugins.audio import resample
from plugins.faster_whisper import STT, decode
from plugins.faster_whisper.decode import WindowedDecoder
from plugins.faster_whisper.stt import decode_prompt
from worker.models import load_stt
from worker.settings import Settings

from .conftest import load_pcm, word_error_rate

pytestmark = pytest.mark.models

SENTENCES = [
    "What time does the pharmacy open tomorrow morning?",
    "I would like to book a table for two people at seven tonight.",
    "Please transfer me to the billing department.",
    "My account number is four five six seven.",
    "Can you tell me the weather forecast for the weekend?",
]


@pytest.fixture(scope="module")
def whisper(real_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> STT:
    d = tmp_path_factory.mktemp("stt")
    (d / "models").symlink_to(real_models_dir, target_is_directory=True)
    return load_stt(Settings(data_dir=d))


def test_transcribes_spoken_sentences_with_low_word_error(whisper: STT, espeak) -> None:  # type: ignore[no-untyped-def]
    errors = []
    for text in SENTENCES:
        samples, rate = load_pcm(espeak(text))
        pcm = resample(samples, rate, 16000).astype(np.float32) / 32768.0
        heard = whisper.transcribe_pcm(pcm)
        errors.append(word_error_rate(text, heard))
    mean = sum(errors) / len(errors)
    assert mean < 0.2, f"mean WER {mean:.2f}: {errors}"


async def _stream(
    whisper: STT, samples: np.ndarray, rate: int, pace: float
) -> list[tuple[float, lkstt.SpeechEvent]]:
    stream = whisper.stream()
    events: list[tuple[float, lkstt.SpeechEvent]] = []
    n = rate // 50
    audio = np.concatenate([np.zeros(rate // 2, np.int16), samples, np.zeros(rate, np.int16)])
    t0 = time.monotonic()

    async def feed() -> None:
        for i in range(0, len(audio), n):
            chunk = audio[i : i + n]
            if len(chunk) < n:
                chunk = np.pad(chunk, (0, n - len(chunk)))
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, n))
            await asyncio.sleep(0.02 / pace)
        stream.end_input()

    feeder = asyncio.create_task(feed())
    async for ev in stream:
        events.append((time.monotonic() - t0, ev))
    await feeder
    return events


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_stream_gives_final_transcript_at_any_input_rate(
    whisper: STT, espeak, rate: int
) -> None:  # type: ignore[no-untyped-def]
    errors = []
    for text in (SENTENCES[1], SENTENCES[2]):
        samples, src = load_pcm(espeak(text))
        events = await _stream(whisper, resample(samples, src, rate), rate, pace=8.0)
        kinds = [ev.type for _, ev in events]
        assert kinds[0] == lkstt.SpeechEventType.START_OF_SPEECH
        assert kinds[-1] == lkstt.SpeechEventType.END_OF_SPEECH
        finals = [
            ev.alternatives[0].text
            for _, ev in events
            if ev.type == lkstt.SpeechEventType.FINAL_TRANSCRIPT
        ]
        assert len(finals) == 1, finals
        errors.append(word_error_rate(text, finals[0]))
    assert sum(errors) / len(errors) < 0.3, errors


async def test_stream_gives_interim_transcripts_while_the_caller_speaks(
    whisper: STT, espeak
) -> None:  # type: ignore[no-untyped-def]
    long = "I would like to book a table for two people at seven tonight, near the window please."
    samples, src = load_pcm(espeak(long))
    events = await _stream(whisper, samples, src, pace=1.0)  # real time
    interim = [(t, ev) for t, ev in events if ev.type == lkstt.SpeechEventType.INTERIM_TRANSCRIPT]
    final_t = next(t for t, ev in events if ev.type == lkstt.SpeechEventType.FINAL_TRANSCRIPT)
    assert len(interim) >= 2, "the growing utterance should be re-decoded while it is spoken"
    assert all(t < final_t for t, _ in interim)
    texts = [ev.alternatives[0].text for _, ev in interim]
    assert len(texts[-1].split()) > len(texts[0].split()), texts


def _pcm(espeak, text: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    samples, rate = load_pcm(espeak(text))
    return resample(samples, rate, 16000).astype(np.float32) / 32768.0


def test_a_short_utterance_is_decoded_in_the_short_window(whisper: STT, espeak) -> None:  # type: ignore[no-untyped-def]
    """The final transcript must not pay for Whisper's whole 30 s window: a plain question
    decodes in the short one, with the same words as in the full window."""
    pcm = _pcm(espeak, SENTENCES[0])
    short = whisper.decode_pcm(pcm)
    assert short is not None and not short.full_window
    full = WindowedDecoder(whisper._model).decode([pcm], "en", short=False)[0]
    assert full.full_window
    assert word_error_rate(full.text, short.text) == 0.0, (short.text, full.text)
    assert 0.0 < short.confidence <= 1.0


def test_an_unsound_short_decode_is_redone_in_the_full_window(
    whisper: STT,
    espeak,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the short window's words look invented (here: any words at all are "too many"
    for the audio), the decoder falls back to the full window rather than returning them."""
    monkeypatch.setattr(decode, "MAX_WORDS_PER_SECOND", -1.0)
    d = whisper.decode_pcm(_pcm(espeak, SENTENCES[2]))
    assert d is not None and d.full_window
    assert word_error_rate(SENTENCES[2], d.text) < 0.3, d.text


def test_a_phrase_said_twice_in_a_row_marks_a_loop() -> None:
    assert decode.repeats_itself("Okay okay okay okay")
    assert decode.repeats_itself("Do you have many many options")
    assert decode.repeats_itself("can I can I speak")
    assert not decode.repeats_itself("I would like to book a table for two at seven.")


def _trim(samples: np.ndarray) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    return samples[voiced[0] : voiced[-1] + 1]


def _finals(events: list[tuple[float, lkstt.SpeechEvent]]) -> list[str]:
    return [
        ev.alternatives[0].text
        for _, ev in events
        if ev.type == lkstt.SpeechEventType.FINAL_TRANSCRIPT
    ]


async def test_the_final_is_the_decode_started_at_the_first_silence(
    whisper: STT,
    espeak,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The final transcript is decoded once, starting as the silence begins, not again when
    the VAD closes the utterance; with the early decode off, the counter stays put."""
    samples, src = load_pcm(espeak(SENTENCES[1]))
    before = whisper.early_finals
    events = await _stream(whisper, samples, src, pace=4.0)
    assert whisper.early_finals == before + 1
    (final,) = _finals(events)
    assert word_error_rate(SENTENCES[1], final) < 0.3, final

    monkeypatch.setattr(whisper, "_early_final", 0.0)
    events = await _stream(whisper, samples, src, pace=4.0)
    assert whisper.early_finals == before + 1
    assert len(_finals(events)) == 1


async def test_a_pause_shorter_than_the_utterance_gap_drops_the_early_decode(
    whisper: STT,
    espeak,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller pausing mid-sentence for less than ``min_silence``: the decode started in the
    pause is dropped and the one final holds both halves."""
    monkeypatch.setattr(whisper, "_early_final", 0.05)
    first, src = load_pcm(espeak("I would like to book a table"))
    second, _ = load_pcm(espeak("for two people tonight."))
    gap = np.zeros(int(src * 0.16), np.int16)  # espeak's own silences trimmed below
    dropped = whisper.early_dropped
    events = await _stream(whisper, np.concatenate([_trim(first), gap, _trim(second)]), src, 4.0)
    (final,) = _finals(events)
    assert word_error_rate("I would like to book a table for two people tonight.", final) < 0.3
    assert whisper.early_dropped > dropped, "the pause should have started an early decode"


async def test_the_openers_prompt_reaches_each_decode_as_it_stands_then(
    whisper: STT,
    espeak,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker leans decodes over its reply toward backchannels through ``decode_prompt``:
    the stream reads the callable when it opens and asks it before every decode, so the
    prompt follows the reply starting and stopping. Control: a stream opened without one
    decodes unprompted."""
    prompts: list[str | None] = []
    real = whisper.hear_async

    async def spy(pcm: np.ndarray, language: str | None = None, prompt: str | None = None):  # type: ignore[no-untyped-def]
        prompts.append(prompt)
        return await real(pcm, language, prompt)

    monkeypatch.setattr(whisper, "hear_async", spy)
    samples, src = load_pcm(espeak(SENTENCES[0]))
    token = decode_prompt.set(lambda: "Mm-hmm. Uh-huh.")
    try:
        events = await _stream(whisper, samples, src, pace=4.0)
    finally:
        decode_prompt.reset(token)
    assert prompts and all(p == "Mm-hmm. Uh-huh." for p in prompts), prompts
    assert word_error_rate(SENTENCES[0], _finals(events)[0]) < 0.3, "the prompt spoilt the words"

    prompts.clear()
    await _stream(whisper, samples, src, pace=4.0)
    assert prompts and all(p is None for p in prompts), prompts
