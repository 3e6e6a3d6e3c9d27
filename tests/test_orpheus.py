"""The Orpheus plugin: token parsing, framing, windowing, trimming and interruption against a
local server streaming Orpheus-shaped tokens, and the SNAC decode path with a codec of the
real shape and random weights (no Orpheus or SNAC weights are available offline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from plugins.orpheus import TTS, CodeParser, OrpheusOptions, WindowDecoder, random_snac, token_for
from plugins.orpheus.decoder import SAMPLES_PER_FRAME

from .orpheus_server import OrpheusServer


def marker_decoder(frames: list[list[int]]) -> np.ndarray:
    """A stand-in codec: each frame becomes a block whose level is its first code / 4096, so
    tests can check which frames were emitted, in which order, exactly once."""
    return np.concatenate([np.full(SAMPLES_PER_FRAME, f[0] / 4096, np.float32) for f in frames])


def test_parser_handles_split_tokens_levels_and_the_end() -> None:
    p = CodeParser()
    text = "junk<custom_token_4>" + "".join(token_for(c, i) for i, c in enumerate(range(100, 114)))
    text += "<custom_token_2>" + token_for(5, 14)
    codes: list[int] = []
    for i in range(0, len(text), 7):  # arbitrary 7-character pieces
        codes += p.feed(text[i : i + 7])
    assert codes == list(range(100, 114))
    assert p.ended and p.rejected == 1  # the control token; nothing after the end


@pytest_asyncio.fixture
async def server() -> AsyncIterator[OrpheusServer]:
    s = OrpheusServer()
    await s.start()
    yield s
    await s.stop()


async def _speak(tts: TTS, text: str) -> tuple[np.ndarray, list[float]]:
    stream = tts.stream()
    stream.push_text(text)
    stream.end_input()
    chunks: list[np.ndarray] = []
    times: list[float] = []
    async for ev in stream:
        chunks.append(np.frombuffer(ev.frame.data, np.int16))
        times.append(time.monotonic())
    await stream.aclose()
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16), times


async def test_every_frame_is_emitted_once_in_order(server: OrpheusServer) -> None:
    tts = TTS(opts=OrpheusOptions(base_url=server.url, voice="tara", trim_silence=False),
              decoder=marker_decoder)  # fmt: skip
    audio, _ = await _speak(tts, "Hello there, this is one sentence.")
    levels = audio.reshape(-1, SAMPLES_PER_FRAME)[:, 0] / 32767 * 4096 / 100
    assert np.allclose(levels, np.arange(1, server.frames + 1), atol=0.05), levels
    (req,) = server.requests
    assert req["model"] == "tara" and req["stream"] is True
    assert req["prompt"].startswith("<custom_token_3><|begin_of_text|>tara: Hello there")
    await tts.aclose()


async def test_first_audio_after_four_frames(server: OrpheusServer) -> None:
    server.per_frame_s = 0.05
    got_at: list[int] = []
    tts = TTS(opts=OrpheusOptions(base_url=server.url, trim_silence=False),
              decoder=marker_decoder)  # fmt: skip
    stream = tts.stream()
    stream.push_text("A sentence to say.")
    stream.end_input()
    async for _ in stream:
        got_at.append(server.sent_frames)
        break
    await stream.aclose()
    assert got_at and got_at[0] <= 5  # a window of four, not the whole reply
    await tts.aclose()


async def test_leading_silence_is_trimmed_and_reported(server: OrpheusServer) -> None:
    server.silent_frames = 7  # ~600 ms, like the stock voices
    tts = TTS(opts=OrpheusOptions(base_url=server.url), decoder=marker_decoder)
    trims: list[float] = []
    tts.on_trimmed = trims.append
    audio, _ = await _speak(tts, "Trim me please.")
    expect = 7 * SAMPLES_PER_FRAME / 24000 - 0.02  # all but 20 ms before the first sound
    assert trims and abs(trims[0] - expect) < 0.005, trims
    assert tts.trimmed == trims
    assert audio.size == (server.frames - 7) * SAMPLES_PER_FRAME + int(0.02 * 24000)
    await tts.aclose()


async def test_interruption_closes_the_request(server: OrpheusServer) -> None:
    server.endless = True
    server.per_frame_s = 0.02
    tts = TTS(opts=OrpheusOptions(base_url=server.url, trim_silence=False),
              decoder=marker_decoder)  # fmt: skip
    stream = tts.stream()
    stream.push_text("This reply gets cut off by the caller.")
    stream.end_input()
    async for _ in stream:
        break
    closed = time.monotonic()
    await stream.aclose()
    for _ in range(50):
        if server.disconnected_at is not None:
            break
        await asyncio.sleep(0.02)
    assert server.disconnected_at is not None, "the server kept generating"
    assert server.disconnected_at - closed < 1.0
    await tts.aclose()


async def test_sentences_per_request_and_router_resolution(server: OrpheusServer) -> None:
    server.frames = 5
    asked: list[str] = []

    async def resolve(voice: str) -> str:
        asked.append(voice)
        return server.url

    tts = TTS(opts=OrpheusOptions(voice="leo", model="leo-lora", sentences_per_request=2,
                                  resolver=resolve), decoder=marker_decoder)  # fmt: skip
    await _speak(tts, "The first sentence is here. The second one follows it. A third ends it.")
    assert [r["model"] for r in server.requests] == ["leo-lora", "leo-lora"]
    assert "The first sentence is here. The second one follows it." in server.requests[0]["prompt"]
    assert "A third ends it." in server.requests[1]["prompt"]
    assert asked == ["leo-lora", "leo-lora"]
    await tts.aclose()


async def test_snac_decode_path_with_random_weights(server: OrpheusServer) -> None:
    pytest.importorskip("snac", reason="install the `orpheus` extra")
    decode = WindowDecoder(random_snac())
    rng = np.random.default_rng(0)
    frames = [[int(x) for x in rng.integers(0, 4096, 7)] for _ in range(4)]
    for n in (1, 2, 4):  # 2048 samples per frame at every window size
        audio = decode(frames[:n])
        assert audio.shape == (n * SAMPLES_PER_FRAME,) and audio.dtype == np.float32
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # the whole plugin on the real codec: every frame's audio comes out
    server.frames = 10
    tts = TTS(opts=OrpheusOptions(base_url=server.url, trim_silence=False), decoder=decode)
    out, _ = await _speak(tts, "Decoded by SNAC.")
    assert out.size == 10 * SAMPLES_PER_FRAME
    await tts.aclose()


async def test_a_dead_node_is_left_and_the_sentence_spoken_by_another(tmp_path: Path) -> None:
    """Through the real router: the session's Orpheus node stops answering (its record not yet
    lapsed); the request is re-pinned once to the other node holding the voice, and the
    sentence is spoken in full."""
    import redis.asyncio as aioredis

    from infra.router import NodeInfo, NodeRegistration, Router, SessionRoute

    from .redis_server import redis_server

    servers = {"gpu-a": OrpheusServer(frames=6), "gpu-b": OrpheusServer(frames=6)}
    for s in servers.values():
        await s.start()
    with redis_server(tmp_path) as url:
        r = aioredis.from_url(url)
        regs = [NodeRegistration(r, NodeInfo(k, s.url, ["orpheus-3b"], ["leo-lora"]))
                for k, s in servers.items()]  # fmt: skip
        for g in regs:
            await g.start()
        counted: list[str] = []
        route = SessionRoute(Router(r, cache_s=0), "call-1", on_fallback=counted.append)
        tts = TTS(opts=OrpheusOptions(voice="leo", model="leo-lora", resolver=route,
                                      trim_silence=False), decoder=marker_decoder)  # fmt: skip
        try:
            await _speak(tts, "Hello there.")
            (first,) = [k for k, s in servers.items() if s.requests]
            await servers[first].stop()
            audio, _ = await _speak(tts, "Still here.")
        finally:
            await tts.aclose()
            for g in regs:
                await g.stop()
            await r.aclose()
            for s in servers.values():
                await s.stop()
    other = next(k for k in servers if k != first)
    assert len(servers[other].requests) == 1 and counted == ["repin"]
    assert audio.size == 6 * SAMPLES_PER_FRAME, "every frame of the sentence was spoken"
