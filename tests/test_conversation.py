"""Whole conversations on the real models through the in-process loopback transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from plugins.audio import resample
from plugins.net import free_port
from telephony.loopback import LoopbackCall
from worker import records
from worker.call import run_call
from worker.models import load_models
from worker.settings import Settings

from .conftest import load_pcm

pytestmark = [pytest.mark.models, pytest.mark.slow]


async def _converse(
    settings: Settings, utterances: list[Path], gap: float = 1.0
) -> tuple[list[dict], str]:  # type: ignore[type-arg]
    """Greeting, then each utterance; the caller waits for each reply, then ``gap`` seconds."""
    models = await load_models(settings)
    call = LoopbackCall(records.new_call_id(), input_rate=16000)
    call.start_listening()

    async def caller() -> None:
        await call.silence_until_reply(1)  # the greeting plays
        for i, path in enumerate(utterances):
            samples, rate = load_pcm(path)
            await call.play(resample(samples, rate, 16000))
            await call.silence_until_reply(i + 2)
            await call.silence(gap)
        call.mark_ended("caller_hangup")

    script = asyncio.create_task(caller())
    try:
        result = await asyncio.wait_for(run_call(models, call, profile="telephony"), 300)
        await script
        assert models.stt is not None
        heard = call.heard()
        heard_16k = resample(heard, call.output_rate, 16000).astype(np.float32) / 32768.0
        text = await models.stt.transcribe_async(heard_16k)
    finally:
        await call.close()
        await models.aclose()
    return records.read_records(result.record.path), text


async def test_caller_question_gets_a_spoken_reply(settings: Settings, espeak) -> None:  # type: ignore[no-untyped-def]
    recs, heard = await _converse(settings, [espeak("What time does the pharmacy open tomorrow?")])
    turns = [r for r in recs if r["type"] == "turn"]
    assert recs[0]["type"] == "call_start" and recs[0]["transport"] == "loopback"
    assert turns[0]["role"] == "agent" and turns[0]["text"] == settings.agent.greeting
    user = [t for t in turns if t["role"] == "user"]
    assert user and "pharmacy" in user[0]["text"].lower()
    replies = [t for t in turns[1:] if t["role"] == "agent"]
    assert replies and replies[0]["text"].strip()
    assert replies[0]["voice_to_voice_ms"] is not None and replies[0]["voice_to_voice_ms"] > 0
    timings = replies[0]["timings"]
    for key in ("stt_final_ms", "end_of_turn_ms", "llm_first_token_ms", "tts_first_audio_ms"):
        assert timings[key] is not None and timings[key] >= 0, timings
    assert timings["first_audio_out"] > timings["caller_speech_end"]
    # the VAD declares the end only after its minimum silence has passed since the last voiced
    # sample; the framework's speech end is that sample, so the lag can be no shorter
    assert timings["vad_end_ms"] is not None, timings
    assert timings["vad_end_ms"] >= settings.turn.vad_min_silence * 1000 - 1, timings
    assert set(replies[0]["speculative"]) >= {"started", "used", "cancelled", "wasted_tokens"}
    assert recs[-1] == {**recs[-1], "type": "call_end", "reason": "caller_hangup"}
    assert "help" in heard.lower(), f"the caller should have heard the greeting: {heard!r}"


async def test_unreachable_llm_gets_a_spoken_apology_and_the_call_goes_on(
    settings: Settings, espeak
) -> None:  # type: ignore[no-untyped-def]
    settings.llm.base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    recs, heard = await _converse(
        settings,
        [espeak("Can you book me a table for tonight?"), espeak("Hello, are you still there?")],
        gap=4.0,  # the second apology plays out before the caller hangs up
    )
    turns = [r for r in recs if r["type"] == "turn"]
    users = [t for t in turns if t["role"] == "user"]
    agents = [t for t in turns if t["role"] == "agent"][1:]  # after the greeting
    assert len(users) == 2, turns
    assert len(agents) == 2, turns
    assert all(a["text"] == settings.agent.apology for a in agents)
    assert recs[-1]["type"] == "call_end" and recs[-1]["reason"] == "caller_hangup"
    # both apologies are in the record above; in the audio, Whisper tiny often merges a
    # repeated sentence in a long recording, so one audible apology is what can be asserted
    assert "sorry" in heard.lower(), heard
