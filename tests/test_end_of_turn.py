"""End-of-turn signals: the text rule, Smart Turn's features and the model on real speech."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from plugins.audio import resample
from plugins.smart_turn import SAMPLE_RATE, SmartTurn, log_mel
from plugins.smart_turn.model import window
from worker import assets
from worker.settings import load_settings
from worker.turns.completeness import sounds_unfinished


@pytest.mark.parametrize(
    "text",
    [
        "I'd like to book a table for",
        "My name is",
        "Um, I was wondering if",
        "We need a table for four and",
        "It's for my",
        "Let me think, um",
        "The booking is under the name of...",
        "Could you tell me-",
    ],
)
def test_a_dangling_end_reads_unfinished(text: str) -> None:
    assert sounds_unfinished(text)


@pytest.mark.parametrize(
    "text",
    [
        "Saturday at eight.",
        "Thank you.",
        "Hold on.",
        "What?",
        "I'd like that.",
        "See you then.",
        "Five five five, two one three four.",
        "Yes I am.",
        "That's all I need.",
        "",
    ],
)
def test_a_whole_turn_is_not_held(text: str) -> None:
    assert not sounds_unfinished(text)


def test_features_agree_with_faster_whispers_extractor() -> None:
    """Our log-mel is written from the Whisper recipe; faster-whisper's extractor is an
    independent implementation of it, so both must give the same 80 x 800 frames."""
    from faster_whisper.feature_extractor import FeatureExtractor

    rng = np.random.default_rng(1)
    t = np.arange(SAMPLE_RATE * 3) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)) * 32767
    audio = window(tone.astype(np.int16))
    ours = log_mel(audio)
    assert ours.shape == (80, 800)
    norm = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    theirs = FeatureExtractor(feature_size=80, chunk_length=8)(norm, padding=0)
    assert np.abs(ours - theirs[:, :800]).max() < 1e-3


def _espeak(text: str) -> np.ndarray:
    import io
    import wave

    out = subprocess.run(
        ["espeak-ng", "-v", "en-gb", "-s", "160", "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        rate = w.getframerate()
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 200)
    pcm = pcm[loud[0] : loud[-1] + 1]
    tail = np.zeros(SAMPLE_RATE // 5, np.int16)  # 0.2 s of silence, as at a decision
    return np.concatenate([resample(pcm, rate, SAMPLE_RATE), tail])


def test_smart_turn_hears_a_finished_question_and_a_trailing_filler() -> None:
    """The real model (the asset `download-files --with smart-turn` fetches) on speech it was
    not tuned on: a whole question reads finished, the same words trailing into "um" do not."""
    settings = load_settings()
    model = SmartTurn(assets.resolve("smart-turn", settings.models_dir))
    done = model.predict(_espeak("What time do you open on Sunday?"))
    trailing = model.predict(_espeak("What time do you open on, um"))
    assert done > model.threshold > trailing, (done, trailing)


def test_a_missing_model_file_says_what_to_run(tmp_path: object) -> None:
    with pytest.raises(FileNotFoundError, match="download-files --with smart-turn"):
        SmartTurn("/nonexistent/smart-turn.onnx")


@pytest.mark.asyncio
async def test_the_veto_raises_the_streams_threshold_only_while_the_words_dangle() -> None:
    """The seam livekit-agents reads after each prediction: the detector stream's
    ``unlikely_threshold``. Mid-sentence words lift it above any probability and switch the
    session's maximum delay to the words' hold; a finished sentence gets v1-mini's own
    English threshold and the normal maximum back."""
    from worker.turns.detector import HOLD, TextVetoTurnDetector

    detector = TextVetoTurnDetector(version="v1-mini")
    max_delays: list[float] = []  # what the session's update_options would be given
    detector.hold_with(max_delays.append, normal=1.2, held=1.5)
    stream = detector.stream()
    try:
        shipped = await stream.unlikely_threshold(None)
        assert shipped is not None and 0 < shipped < 1
        assert max_delays == []  # already the normal maximum: nothing to change
        detector.note("I'd like to book a table for")
        assert await stream.unlikely_threshold(None) == HOLD
        assert max_delays == [1.5]  # the words' longer hold for this decision
        detector.note("I'd like to book a table for four.")
        assert await stream.unlikely_threshold(None) == shipped
        assert max_delays == [1.5, 1.2]  # and back
        assert detector.held == 1
    finally:
        await stream.aclose()
