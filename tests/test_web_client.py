"""The LiveKit web client's token endpoint and page, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest_asyncio
from livekit import api
from pydantic import SecretStr

from plugins.net import free_port
from worker.settings import Settings
from worker.web.server import WebClientServer

from .livekit_api_server import KEY, SECRET


@pytest_asyncio.fixture
async def web_client(settings: Settings) -> AsyncIterator[str]:
    settings.livekit.url = "wss://lk.example.com"
    settings.livekit.api_key = KEY
    settings.livekit.api_secret = SecretStr(SECRET)
    settings.livekit.token_ttl = 300
    server = WebClientServer(settings)
    port = free_port()
    await server.start("127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    await server.stop()


async def test_token_joins_one_new_room_only_and_dispatches_the_agent(web_client: str) -> None:
    async with aiohttp.ClientSession() as http:
        first = await (await http.post(f"{web_client}/token")).json()
        second = await (await http.post(f"{web_client}/token")).json()
    assert first["url"] == "wss://lk.example.com"
    assert first["room"] != second["room"], "each caller gets a fresh room"
    claims = api.TokenVerifier(KEY, SECRET).verify(first["token"])
    v = claims.video
    assert v is not None and v.room_join and v.room == first["room"]
    assert v.can_publish and v.can_subscribe and v.can_publish_data
    assert list(v.can_publish_sources) == ["microphone"]
    assert not (v.room_admin or v.room_create or v.room_list or v.room_record or v.ingress_admin)
    assert claims.identity == first["identity"]
    assert claims.room_config is not None
    assert [a.agent_name for a in claims.room_config.agents] == ["voice-agent"]
    exp = jwt.decode(first["token"], options={"verify_signature": False})["exp"]
    assert 0 < exp - time.time() <= 300 + 5


async def test_page_and_missing_sdk_message(web_client: str, settings: Settings) -> None:
    async with aiohttp.ClientSession() as http:
        page = await (await http.get(f"{web_client}/")).text()
        assert "/livekit-client.umd.js" in page and "lk.transcription" in page
        sdk = await http.get(f"{web_client}/livekit-client.umd.js")
        if (settings.models_dir / "web/livekit-client.umd.js").exists():
            assert sdk.status == 200 and "LivekitClient" in (await sdk.text())[:200_000]
        else:
            assert sdk.status == 404 and "download-files --with livekit-client" in await sdk.text()


async def test_token_endpoint_without_credentials_says_so(settings: Settings) -> None:
    settings.livekit.api_key = None
    server = WebClientServer(settings)
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"http://127.0.0.1:{port}/token")
            assert resp.status == 503 and "LIVEKIT_API_KEY" in (await resp.json())["error"]
    finally:
        await server.stop()


async def test_a_page_elsewhere_cannot_mint_tokens(web_client: str) -> None:
    async with aiohttp.ClientSession() as http:
        evil = {"Origin": "http://evil.example"}
        async with http.post(f"{web_client}/token", headers=evil) as resp:
            assert resp.status == 403
        async with http.post(f"{web_client}/token", headers={"Origin": web_client}) as resp:
            assert resp.status == 200  # the page itself
