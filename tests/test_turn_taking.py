"""Turn-taking scenarios on the real models, driven by the call harness (tests/scenarios/).

Caller audio is made at test time with espeak-ng. Each test asserts on what the caller
experienced (from the harness's own timeline) and on what the chat history kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from worker.harness import load_scenario, run_scenario
from worker.models import Models, load_models
from worker.settings import Settings

pytestmark = [pytest.mark.models, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SCENARIOS = Path(__file__).parent / "scenarios"
LONG_GREETING = (
    "Hello and welcome to the restaurant booking line. I can book a table, change a booking, "
    "or tell you about our opening hours and the menu. What would you like to do today?"
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def models(
    real_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Models]:
    d = tmp_path_factory.mktemp("turns")
    (d / "models").symlink_to(real_models_dir, target_is_directory=True)
    m = await load_models(Settings(data_dir=d))
    yield m
    await m.aclose()


async def _run(models: Models, name: str, greeting: str | None = None) -> dict:  # type: ignore[type-arg]
    default = Settings().agent.greeting
    models.settings.agent.greeting = greeting or default
    return await run_scenario(models, load_scenario(SCENARIOS / f"{name}.yaml"), "default")


def _assistant(result: dict) -> list[dict]:  # type: ignore[type-arg]
    return [m for m in result["chat"] if m["role"] == "assistant"]


def _both_halves_before_any_reply(result: dict, first: str, second: str) -> None:  # type: ignore[type-arg]
    """No cut-off, and no agent reply between the two halves of the caller's sentence."""
    assert result["summary"]["cut_offs"] == 0, result
    chat = [m for m in result["chat"] if m["role"] in ("user", "assistant")]
    users = [i for i, m in enumerate(chat) if m["role"] == "user"]
    assert users, chat
    assert all(m["role"] == "user" for m in chat[users[0] : users[-1] + 1]), chat
    heard = " ".join(chat[i]["text"] for i in users).lower()
    assert first in heard and second in heard, heard


async def test_mid_turn_pause_neither_cuts_off_the_caller_nor_keeps_a_stale_reply(
    models: Models,
) -> None:
    result = await _run(models, "mid-turn-pause")
    _both_halves_before_any_reply(result, "table", "seven")
    assert len(_assistant(result)) >= 2, "the agent answered the whole sentence"
    spec = result["speculation"]
    # the first half's final transcript lands after the caller resumed: no reply may be
    # speculated on it, or one that was must be thrown away
    assert spec["skipped_while_speaking"] + spec["cancelled"] >= 1, spec
    assert spec["used"] <= 1


async def test_a_pause_after_a_dangling_word_is_held_by_the_words(models: Models) -> None:
    """A 0.7 s pause right after "for" (longer than the 0.4 s minimum delay): the text veto
    holds the turn, whatever v1-mini heard, so one reply answers the whole sentence."""
    result = await _run(models, "dangling-word-pause")
    _both_halves_before_any_reply(result, "table", "friday")
    # the words did the holding: the veto was consulted on the paused half and said wait
    assert result["turns_held_by_words"] >= 1, result["turns_held_by_words"]


async def test_backchannel_resumes_playout_and_history_keeps_the_full_reply(models: Models) -> None:
    result = await _run(models, "backchannel", LONG_GREETING)
    (it,) = result["interruptions"]
    assert it["kind"] == "backchannel"
    assert it["pause_ms"] is not None and it["pause_ms"] < 250, it
    assert it["resumed"], it
    greeting = _assistant(result)[0]
    assert greeting["text"] == LONG_GREETING and not greeting["interrupted"]
    assert not any(m["role"] == "user" for m in result["chat"]), "a backchannel is no turn"


async def test_real_interruption_cuts_the_reply_and_history_holds_what_was_heard(
    models: Models,
) -> None:
    result = await _run(models, "interruption", LONG_GREETING)
    it = result["interruptions"][0]
    assert it["kind"] == "interrupt"
    assert it["pause_ms"] is not None and it["pause_ms"] < 250, it
    assert not it["resumed"]
    # cut once the words decided: interim words, or at the latest the final transcript
    # (a wide bound: the words take longer to come on a loaded machine)
    assert result["cut_after_pause_ms"] and result["cut_after_pause_ms"][0] < 8000, result
    greeting = _assistant(result)[0]
    assert greeting["interrupted"]
    assert 0 < len(greeting["text"]) < len(LONG_GREETING)
    assert LONG_GREETING.startswith(greeting["text"].rstrip(".").strip()[:20])
    assert "What would you like" not in greeting["text"], "only what was heard is kept"


async def test_noise_burst_does_not_cut_the_reply(models: Models) -> None:
    result = await _run(models, "noise-burst", LONG_GREETING)
    (it,) = result["interruptions"]
    assert it["kind"] == "noise"
    assert it["resumed"], it
    greeting = _assistant(result)[0]
    assert greeting["text"] == LONG_GREETING and not greeting["interrupted"]


async def test_the_prepared_greeting_plays_without_a_synthesis_call(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The greeting is synthesised once at load: a call plays that audio and opens no TTS
    stream for it; a greeting that was not prepared is synthesised (the control)."""
    scenario = tmp_path / "quiet.yaml"
    scenario.write_text(
        "name: quiet\nsteps:\n  - wait_for: agent_speech_start\n  - wait_for: agent_speech_end\n"
    )
    tts = models.session_tts
    opened: list[int] = []
    real_stream = tts.stream

    def counting_stream(*args: object, **kwargs: object) -> object:
        opened.append(1)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(tts, "stream", counting_stream)
    assert models.phrases is not None and Settings().agent.greeting in models.phrases
    replayed = models.phrases.replayed
    models.settings.agent.greeting = Settings().agent.greeting
    result = await run_scenario(models, load_scenario(scenario), "default")
    assert _assistant(result)[0]["text"] == Settings().agent.greeting
    assert models.phrases.replayed == replayed + 1
    assert opened == [], "the prepared greeting was synthesised again"
    assert result["time_to_greeting_ms"] is not None

    models.settings.agent.greeting = "Good morning, this line is new."
    result = await run_scenario(models, load_scenario(scenario), "default")
    assert _assistant(result)[0]["text"] == "Good morning, this line is new."
    assert opened, "control: a line not prepared goes through the TTS"


async def test_a_misheard_backchannel_still_resumes(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whisper often misspells a short "uh-huh" over the agent ("Uh-hi.", "Mm-hums."). The
    STT is made to mishear every short sound so (the fake is the spelling only: the audio,
    the VAD pause, the STT's timing and the agent's decision are real); the reply must
    resume all the same, from the sound's length and what its letters sound like. Control:
    trusting the words alone, the same mishearing cuts the reply."""
    from plugins.faster_whisper.stt import Heard

    stt = models.stt
    assert stt is not None
    real = stt.hear_async

    async def mishear(pcm: Any, language: str | None = None, prompt: str | None = None) -> Heard:
        heard = await real(pcm, language, prompt)
        return Heard("Uh-hi.", heard.confidence) if pcm.size < 1.5 * 16000 else heard

    monkeypatch.setattr(stt, "hear_async", mishear)
    result = await _run(models, "backchannel", LONG_GREETING)
    (it,) = result["interruptions"]
    assert it["resumed"], it
    assert not any(m["role"] == "user" for m in result["chat"]), "a backchannel is no turn"

    monkeypatch.setattr(models.settings.turn, "backchannel_max_seconds", 0.0)
    result = await _run(models, "backchannel", LONG_GREETING)
    (it,) = result["interruptions"]
    assert not it["resumed"], f"control: the words alone should have cut the reply: {it}"
