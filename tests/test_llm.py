"""The OpenAI-compatible LLM plugin against the real embedded llama.cpp server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
import pytest_asyncio
from livekit.agents import APIConnectionError, APIConnectOptions, llm

from plugins.llama_cpp import EmbeddedLLMServer
from plugins.llama_cpp.server import free_port
from plugins.vllm import LLM, LLMOptions
from worker import assets

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

NO_RETRY = APIConnectOptions(max_retry=0, timeout=5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(real_models_dir: Path) -> AsyncIterator[EmbeddedLLMServer]:
    srv = EmbeddedLLMServer(str(assets.asset_path(real_models_dir, "smollm2")), alias="smollm2")
    await srv.start()
    yield srv
    srv.stop()


def _ctx(question: str) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are a helpful assistant.")
    ctx.add_message(role="user", content=question)
    return ctx


async def test_streams_a_reply_token_by_token(server: EmbeddedLLMServer) -> None:
    model = LLM(opts=LLMOptions(base_url=server.base_url, model="smollm2", max_tokens=40))
    chunks = []
    async with model.chat(chat_ctx=_ctx("Name three colours."), conn_options=NO_RETRY) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                chunks.append(chunk.delta.content)
    await model.aclose()
    assert len(chunks) > 3, "a streamed reply arrives in many chunks"
    assert "".join(chunks).strip()


async def _cpu_seconds(proc: psutil.Process, window: float) -> float:
    before = sum(proc.cpu_times()[:2])
    await asyncio.sleep(window)
    return sum(proc.cpu_times()[:2]) - before


async def test_closing_the_stream_stops_generation(server: EmbeddedLLMServer) -> None:
    """A cancelled reply must stop the server's work, seen as the server's CPU going idle.

    Control first: a request left open keeps the server busy (seconds of CPU per second).
    """
    assert server.pid is not None
    proc = psutil.Process(server.pid)
    ctx = _ctx("Write a very long story about a dragon, at least two thousand words.")
    body = {
        "model": "smollm2", "messages": ctx.to_provider_format("openai")[0], "stream": True,
        "max_tokens": 2000, "temperature": 1.0,
    }  # fmt: skip
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{server.base_url}/chat/completions", json=body)
        await resp.content.readline()
        await asyncio.sleep(0.3)
        busy = await _cpu_seconds(proc, 1.5)
        resp.close()
    assert busy > 0.5, f"control: an open request should keep the server busy ({busy:.2f}s)"
    await asyncio.sleep(1.0)  # let the control request wind down

    model = LLM(
        opts=LLMOptions(base_url=server.base_url, model="smollm2", max_tokens=2000, temperature=1.0)
    )
    got = 0
    async with model.chat(chat_ctx=ctx, conn_options=NO_RETRY) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                got += 1
                if got >= 5:
                    break
    await asyncio.sleep(0.3)
    idle = await _cpu_seconds(proc, 1.5)
    await model.aclose()
    assert got == 5
    assert idle < 0.3, f"server kept generating after the stream was closed ({idle:.2f}s CPU)"


async def test_unreachable_endpoint_fails_fast_with_a_connection_error() -> None:
    port = free_port()
    model = LLM(opts=LLMOptions(base_url=f"http://127.0.0.1:{port}/v1", model="x"))
    t0 = time.perf_counter()
    with pytest.raises(APIConnectionError):
        async with model.chat(chat_ctx=_ctx("hello"), conn_options=NO_RETRY) as stream:
            async for _ in stream:
                pass
    await model.aclose()
    assert time.perf_counter() - t0 < 3.0
