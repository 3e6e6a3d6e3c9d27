"""The shared speech servers on the real models, each with several concurrent clients: the
Kokoro server (OpenAI speech API, streamed PCM) and the streaming Whisper server (WebSocket,
batched decoding across streams), used through the plugins' remote clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from livekit import rtc
from livekit.agents import stt as agents_stt

from plugins.audio import read_wav, resample
from plugins.faster_whisper.remote import RemoteSTT
from plugins.faster_whisper.server import STTServer
from plugins.kokoro.server import KokoroServer
from plugins.kokoro.tts import RemoteTTS
from plugins.net import free_port
from worker.models import load_models
from worker.settings import Settings

from .conftest import word_error_rate

pytestmark = [pytest.mark.models, pytest.mark.slow]

LINES = [
    "I would like to order a pizza for delivery tonight.",
    "Can you tell me the weather forecast for tomorrow?",
    "What time does the pharmacy open tomorrow?",
]


@pytest_asyncio.fixture
async def servers(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    models = await load_models(settings, ("stt", "tts"))
    assert models.stt is not None and models.tts is not None
    kokoro = KokoroServer(models.tts)  # type: ignore[arg-type]
    whisper = STTServer(models.stt)  # type: ignore[arg-type]
    kp, wp = free_port(), free_port()
    await kokoro.start("127.0.0.1", kp)
    await whisper.start("127.0.0.1", wp)
    yield {"models": models, "kokoro": f"http://127.0.0.1:{kp}", "whisper": f"http://127.0.0.1:{wp}",
           "whisper_server": whisper}  # fmt: skip
    await kokoro.stop()
    await whisper.stop()
    await models.aclose()


async def test_kokoro_server_serves_concurrent_clients(servers: dict[str, Any]) -> None:
    url = servers["kokoro"] + "/v1/audio/speech"
    async with aiohttp.ClientSession() as http:

        async def speak(text: str) -> np.ndarray:
            async with http.post(url, json={"input": text, "voice": "af_heart"}) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "audio/pcm"
                return np.frombuffer(await resp.read(), np.int16)

        audios = await asyncio.gather(*(speak(t) for t in LINES))
        stt = servers["models"].stt
        for text, pcm in zip(LINES, audios, strict=True):
            assert pcm.size > 24000  # over a second of speech
            pcm16 = resample(pcm, 24000, 16000).astype(np.float32) / 32768
            heard = await stt.transcribe_async(pcm16)
            assert word_error_rate(text, heard) < 0.35, (text, heard)
        for body, reason in (({"voice": "af_heart"}, "input"),
                             ({"input": "hi", "voice": "nobody"}, "unknown voice"),
                             ({"input": "hi", "response_format": "mp3"}, "pcm")):  # fmt: skip
            async with http.post(url, json=body) as resp:
                assert resp.status == 400 and reason in (await resp.json())["error"]
        # a client that leaves mid-reply does not disturb the next one
        async with http.post(url, json={"input": " ".join(LINES * 3)}) as resp:
            await resp.content.read(4800)
        async with http.post(url, json={"input": "Still here."}) as resp:
            assert resp.status == 200 and len(await resp.read()) > 0


async def test_remote_tts_streams_through_the_server(servers: dict[str, Any]) -> None:
    tts = RemoteTTS(url=servers["kokoro"])
    stream = tts.stream()
    stream.push_text("Hello from the shared speech server. ")
    stream.push_text("It speaks for many workers.")
    stream.end_input()
    frames = [ev.frame async for ev in stream]
    await stream.aclose()
    await tts.aclose()
    assert sum(f.samples_per_channel for f in frames) / 24000 > 1.5


async def _stream_utterance(stt: RemoteSTT, pcm16k: np.ndarray) -> list[agents_stt.SpeechEvent]:
    stream = stt.stream()
    events: list[agents_stt.SpeechEvent] = []

    async def read() -> None:
        async for ev in stream:
            events.append(ev)

    reader = asyncio.create_task(read())
    audio = np.concatenate([np.zeros(4800, np.int16), pcm16k, np.zeros(16000, np.int16)])
    for i in range(0, audio.size, 320):
        chunk = audio[i : i + 320]
        stream.push_frame(rtc.AudioFrame(chunk.tobytes(), 16000, 1, chunk.size))
        await asyncio.sleep(0.01)  # twice real time
    stream.end_input()
    await asyncio.wait_for(reader, 30)
    await stream.aclose()
    return events


async def test_stt_server_streams_for_concurrent_callers(
    servers: dict[str, Any], espeak: Any
) -> None:
    stt = RemoteSTT(url=servers["whisper"].replace("http", "ws"))
    clips = []
    for text in LINES:
        pcm, rate = read_wav(espeak(text))
        clips.append(resample(pcm, rate, 16000))
    results = await asyncio.gather(*(_stream_utterance(stt, c) for c in clips))
    wers = []
    for text, events in zip(LINES, results, strict=True):
        kinds = [e.type for e in events]
        assert agents_stt.SpeechEventType.START_OF_SPEECH in kinds
        finals = [e.alternatives[0].text for e in events
                  if e.type == agents_stt.SpeechEventType.FINAL_TRANSCRIPT]  # fmt: skip
        assert finals, events
        wers.append(word_error_rate(text, " ".join(finals)))
    assert max(wers) < 0.4 and sum(wers) / len(wers) < 0.25, (wers, results)
    # one-shot decodes arriving together are decoded as one batch
    floats = [c.astype(np.float32) / 32768 for c in clips]
    texts = await asyncio.gather(*(stt.transcribe_async(f) for f in floats))
    assert all(word_error_rate(t, h) < 0.4 for t, h in zip(LINES, texts, strict=True)), texts
    assert servers["whisper_server"].batcher.stats.largest >= 2
    await stt.aclose()


async def test_stt_server_closes_a_bad_stream_with_a_reason(servers: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(servers["whisper"] + "/v1/listen?sample_rate=16000")
        await ws.send_bytes(b"\x00\x01\x02")  # not whole 16-bit samples
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1003
        assert "16-bit" in (msg.extra or "")
        ws2 = await http.ws_connect(servers["whisper"] + "/v1/listen?sample_rate=16000")
        await ws2.send_str("hello")
        msg = await ws2.receive(timeout=5)
        assert ws2.close_code == 1003
        resp = await http.get(servers["whisper"] + "/v1/listen?sample_rate=3")
        assert resp.status == 400
