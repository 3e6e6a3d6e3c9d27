"""Twilio Media Streams on the worker's HTTP server, driven by a real WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from plugins.audio import g711_decode, g711_encode, read_wav, resample
from plugins.net import free_port
from telephony import twilio
from worker import records
from worker.local.server import LocalServer
from worker.models import Models, load_models
from worker.settings import Settings

from .conftest import load_pcm

START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": "MZtest",
    "start": {
        "streamSid": "MZtest", "callSid": "CAtest", "accountSid": "ACtest",
        "tracks": ["inbound"], "customParameters": {"from": "+15550100"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}  # fmt: skip


@pytest_asyncio.fixture
async def bare_server(settings: Settings) -> AsyncIterator[tuple[str, Settings]]:
    """A server with no models loaded: protocol errors must be caught before a session."""
    settings.twilio.auth_token = type(settings.twilio.auth_token)("s3cret")
    server = LocalServer(Models(settings=settings))
    port = free_port()
    await server.start("127.0.0.1", port)
    yield f"127.0.0.1:{port}", settings
    await server.stop()


def _signed(url: str) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio.expected_signature("s3cret", url)}


async def test_unsigned_or_badly_signed_streams_are_refused(
    bare_server: tuple[str, Settings],
) -> None:
    host, _ = bare_server
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"X-Twilio-Signature": "bm9wZQ=="}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(f"ws://{host}/twilio/media", headers=headers)
            assert e.value.status == 403


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "not JSON"),
        (json.dumps({"event": "media", "media": {"payload": "AAAA"}}), "before 'start'"),
        (json.dumps({"event": "teleport"}), "unknown event"),
        (
            json.dumps(
                {
                    **START,
                    "start": {
                        **START["start"],
                        "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000},
                    },
                }
            ),
            "unsupported media format",
        ),
    ],
)
async def test_malformed_message_closes_the_stream_with_a_reason(
    bare_server: tuple[str, Settings], message: str, reason: str
) -> None:
    host, _ = bare_server
    url = f"ws://{host}/twilio/media"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, headers=_signed(url))
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
        await ws.send_str(message)
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert closing.data == aiohttp.WSCloseCode.UNSUPPORTED_DATA
        assert reason in (closing.extra or "")
        await ws.close()
        async with http.get(f"http://{host}/healthz") as resp:
            assert (await resp.json())["calls"] == 0


@pytest.mark.models
@pytest.mark.slow
async def test_phone_call_over_media_streams(settings: Settings, espeak) -> None:  # type: ignore[no-untyped-def]
    settings.records.audio = True  # what the worker received, to compare with what was sent
    models = await load_models(settings)
    server = LocalServer(models)
    port = free_port()
    await server.start("127.0.0.1", port)
    samples, rate = load_pcm(espeak("Can I book a table for four people tonight?"))
    caller = resample(samples, rate, 8000)
    heard: list[np.ndarray] = []
    events: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}/twilio/media")

            async def receive() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    events.append(data["event"])
                    if data["event"] == "media":
                        heard.append(g711_decode(base64.b64decode(data["media"]["payload"])))

            receiver = asyncio.create_task(receive())
            await ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await ws.send_json(START)

            async def send(pcm: np.ndarray) -> None:
                for i in range(0, len(pcm), 160):
                    chunk = g711_encode(
                        np.pad(pcm[i : i + 160], (0, max(0, 160 - len(pcm[i : i + 160]))))
                    )
                    await ws.send_json(
                        {"event": "media", "streamSid": "MZtest",
                         "media": {"track": "inbound", "payload": base64.b64encode(chunk).decode()}}
                    )  # fmt: skip
                    await asyncio.sleep(0.02)

            for _ in range(int(120 / 0.5)):  # the greeting plays; its mark follows it
                await send(np.zeros(8000 // 2, np.int16))
                if "mark" in events:
                    break
            await ws.send_json({"event": "dtmf", "streamSid": "MZtest", "dtmf": {"digit": "5"}})
            await send(caller)
            # the caller waits for the reply (a mark follows it), not a fixed time
            marks = events.count("mark")
            for _ in range(int(120 / 0.5)):
                if events.count("mark") > marks:
                    break
                await send(np.zeros(8000 // 2, np.int16))
            await send(np.zeros(8000, np.int16))
            await ws.send_json({"event": "stop", "streamSid": "MZtest", "stop": {}})
            await asyncio.wait_for(receiver, 10)
    finally:
        await server.stop()
        await models.aclose()
    recs = records.read_records(next(records.iter_calls(settings.calls_dir)))
    assert recs[0]["transport"] == "twilio" and recs[0]["caller"] == "+15550100"
    assert {"type": "dtmf", "digit": "5"}.items() <= next(
        r for r in recs if r["type"] == "dtmf"
    ).items()
    users = [r for r in recs if r.get("role") == "user"]
    keys = [u for u in users if u["text"].startswith("[The caller pressed")]
    assert [u["text"] for u in keys] == ["[The caller pressed 5 on the keypad]"]
    spoken = [u for u in users if u not in keys]
    # the caller's audio came through the mu-law stream intact: the worker's recording of the
    # caller holds the sent sentence (as G.711 carries it), sample for sample up to resampling
    (wav,) = settings.recordings_dir.glob("*.caller.wav")
    got, got_rate = read_wav(wav)
    sent = resample(g711_decode(g711_encode(caller)), 8000, got_rate).astype(np.float64)
    assert _best_match(got.astype(np.float64), sent) > 0.9
    # and the STT heard speech in it: tiny.en at 8 kHz spells the words differently run to
    # run ("book a table" as "will cafe will", "four people tonight" as "for people to hide");
    # the corpus benchmark measures that, this test the transport, so one plain word will do
    heard_words = set(re.findall(r"[a-z0-9]+", spoken[0]["text"].lower())) if spoken else set()
    assert heard_words & {"table", "four", "4", "people", "tonight"}, spoken
    agents = [r for r in recs if r.get("role") == "agent"]
    assert len(agents) >= 2, recs
    assert recs[-1]["type"] == "call_end"
    assert "mark" in events, "a mark follows each reply"
    assert models.stt is not None
    audio = np.concatenate(heard)
    text = await models.stt.transcribe_async(
        resample(audio, 8000, 16000).astype(np.float32) / 32768.0
    )
    assert "help" in text.lower(), text


def _best_match(got: np.ndarray, sent: np.ndarray) -> float:
    """The highest normalised correlation of ``sent`` with any stretch of ``got`` (FFT)."""
    n = 1 << (len(got) + len(sent)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(xc[: len(got) - len(sent) + 1]))
    seg = got[lag : lag + len(sent)]
    return float(np.dot(seg, sent) / (np.linalg.norm(seg) * np.linalg.norm(sent) + 1e-9))
