"""`check`, `say` and `transcribe` go through the framework's engine-neutral API, so every
engine works in every command: Orpheus (on a local stand-in for vLLM, no Orpheus weights exist
offline), a shared Kokoro server and a shared STT server (the real `python -m worker
tts-server` / `stt-server`, started here as an operator would)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from plugins.net import free_port

from .conftest import word_error_rate
from .orpheus_server import OrpheusServer

pytestmark = [pytest.mark.models, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _run(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "LIVEKIT_"))}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**clean, **env},
    )  # fmt: skip


def _health(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
        return dict(json.load(resp))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, real_models_dir: Path) -> Iterator[dict]:
    """The shared STT and Kokoro servers as subprocesses, each on a free loopback port."""
    data_dir = tmp_path_factory.mktemp("servers")
    (data_dir / "models").symlink_to(real_models_dir, target_is_directory=True)
    procs, urls = [], {}
    try:
        for kind in ("stt", "tts"):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "worker", f"{kind}-server", "--port", str(port),
                 "--data-dir", str(data_dir)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            urls[kind] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240  # model loads on a busy machine
        for kind, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, f"{kind}-server exited with {proc.returncode}"
                try:
                    _health(urls[kind])
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{kind}-server never answered"
                    time.sleep(0.5)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                assert proc.wait(30) == 0, "a speech server did not stop cleanly on SIGTERM"
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


@pytest_asyncio.fixture
async def orpheus(tmp_path: Path) -> AsyncIterator[tuple[OrpheusServer, dict[str, str]]]:
    """A stand-in Orpheus server and SNAC weights of the real shape (random) in a folder, as
    `SNAC.from_pretrained` reads them: the settings a user of Orpheus sets."""
    pytest.importorskip("snac", reason="install the `orpheus` extra")
    import torch

    from plugins.orpheus.decoder import SNAC_24KHZ, random_snac

    snac = tmp_path / "snac"
    snac.mkdir()
    (snac / "config.json").write_text(json.dumps(SNAC_24KHZ))
    torch.save(random_snac().state_dict(), snac / "pytorch_model.bin")
    server = OrpheusServer(frames=30)
    await server.start()
    env = {"WORKER_TTS__ENGINE": "orpheus", "WORKER_TTS__ORPHEUS_URL": server.url,
           "WORKER_TTS__SNAC": str(snac), "WORKER_TTS__FALLBACK": "none"}  # fmt: skip
    yield server, env
    await server.stop()


def _seconds(wav: Path) -> float:
    with wave.open(str(wav)) as w:
        return w.getnframes() / w.getframerate()


async def test_say_with_orpheus(
    data_dir: Path, orpheus: tuple[OrpheusServer, dict[str, str]]
) -> None:
    server, env = orpheus
    wav = data_dir / "orpheus.wav"
    res = await asyncio.to_thread(_run, data_dir, env, "say", "Hello from Orpheus.", "-o", str(wav))
    assert res.returncode == 0, res.stderr
    assert "Hello from Orpheus." in server.requests[0]["prompt"]
    # 30 frames of 2048 samples at 24 kHz, less any leading silence the plugin trimmed
    assert 0.5 < _seconds(wav) <= 30 * 2048 / 24000 + 0.01


async def test_check_with_orpheus_and_the_stt_server(
    data_dir: Path, orpheus: tuple[OrpheusServer, dict[str, str]], servers: dict[str, str]
) -> None:
    server, env = orpheus
    decodes = _health(servers["stt"])["items"]
    env = {**env, "WORKER_STT__SERVER_URL": servers["stt"].replace("http", "ws"),
           "WORKER_LLM__EMBEDDED_MODEL": "smollm2"}  # fmt: skip
    res = await asyncio.to_thread(_run, data_dir, env, "check")
    assert res.returncode == 0, res.stderr
    loaded = dict(line.split(maxsplit=1) for line in res.stdout.splitlines()[1:6])
    assert "orpheus voice" in loaded["tts"] and "STT server" in loaded["stt"], res.stdout
    assert "The check is complete." in server.requests[-1]["prompt"]
    assert _health(servers["stt"])["items"] > decodes, "the check's audio went to the server"


def test_say_and_transcribe_through_the_shared_servers(
    data_dir: Path, servers: dict[str, str]
) -> None:
    text = "Your table for four is booked for Friday at eight."
    served = _health(servers["tts"])["served"]
    wav = data_dir / "remote.wav"
    env = {"WORKER_TTS__SERVER_URL": servers["tts"]}
    res = _run(data_dir, env, "say", text, "-o", str(wav))
    assert res.returncode == 0, res.stderr
    assert _health(servers["tts"])["served"] > served, "the server synthesised it"
    decodes = _health(servers["stt"])["items"]
    env = {"WORKER_STT__SERVER_URL": servers["stt"].replace("http", "ws")}
    heard = _run(data_dir, env, "transcribe", str(wav))
    assert heard.returncode == 0, heard.stderr
    assert word_error_rate(text, heard.stdout) < 0.3, heard.stdout
    assert _health(servers["stt"])["items"] > decodes, "the server decoded it"


def test_check_with_the_tts_server(data_dir: Path, servers: dict[str, str]) -> None:
    served = _health(servers["tts"])["served"]
    env = {"WORKER_TTS__SERVER_URL": servers["tts"], "WORKER_LLM__EMBEDDED_MODEL": "smollm2"}
    res = _run(data_dir, env, "check")
    assert res.returncode == 0, res.stderr
    assert "check is complete" in res.stdout.lower(), res.stdout
    assert _health(servers["tts"])["served"] > served


async def test_check_through_the_router(data_dir: Path, tmp_path: Path) -> None:
    """A routed worker's `check`: no embedded LLM, and the reply comes from the node the ring
    pins it to (a scripted OpenAI endpoint registered as its node agent would)."""
    import redis.asyncio as aioredis

    from infra.router import NodeInfo, NodeRegistration

    from .fake_llm import tool_calling_llm
    from .redis_server import redis_server

    requests: list[dict[str, object]] = []
    runner, url = await tool_calling_llm(requests, {})
    with redis_server(tmp_path) as redis_url:
        r = aioredis.from_url(redis_url)
        reg = NodeRegistration(r, NodeInfo("gpu-0", url, ["smollm2"]))
        await reg.start()
        try:
            env = {"WORKER_ROUTER__REDIS_URL": redis_url, "WORKER_LLM__MODEL": "smollm2"}
            res = await asyncio.to_thread(_run, data_dir, env, "check")
        finally:
            await reg.stop()
            await r.aclose()
            await runner.cleanup()
    assert res.returncode == 0, res.stderr
    loaded = dict(line.split(maxsplit=1) for line in res.stdout.splitlines()[1:6])
    assert loaded["llm"].endswith("smollm2 via the GPU router's nodes"), res.stdout
    assert requests and requests[-1]["model"] == "smollm2", "the check's reply came via the ring"
