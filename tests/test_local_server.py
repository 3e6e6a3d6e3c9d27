"""The local page's HTTP endpoints: bad offers get a 400 with a reason, the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from plugins.net import free_port
from worker.local.server import LocalServer
from worker.models import Models
from worker.settings import Settings


@pytest_asyncio.fixture
async def base_url(settings: Settings) -> AsyncIterator[str]:
    # no models are loaded: a rejected offer must never reach a session
    server = LocalServer(Models(settings=settings))
    port = free_port()
    await server.start("127.0.0.1", port)
    yield f"http://127.0.0.1:{port}"
    await server.stop()


GOOD_HEADER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


AUDIO_NO_ICE = GOOD_HEADER + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "is not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"type": "offer"}).encode(), "missing 'sdp'"),
        (json.dumps({"sdp": "v=0", "type": "answer"}).encode(), "type 'offer'"),
        (json.dumps({"sdp": GOOD_HEADER, "type": "offer"}).encode(), "no audio"),
        (json.dumps({"sdp": AUDIO_NO_ICE, "type": "offer"}).encode(), "no fingerprint"),
    ],
)
async def test_invalid_offer_gets_400_with_a_reason(
    base_url: str, body: bytes, reason: str
) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{base_url}/offer", data=body, headers=headers) as resp:
            assert resp.status == 400
            assert reason in (await resp.json())["error"]
        async with http.get(f"{base_url}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json()) == {"status": "ok", "calls": 0}


async def test_oversized_offer_is_refused(base_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        big, headers = b"x" * 200_000, {"Content-Type": "application/json"}
        async with http.post(f"{base_url}/offer", data=big, headers=headers) as resp:
            assert resp.status in (400, 413)
        async with http.get(f"{base_url}/") as resp:
            assert resp.status == 200
            page = await resp.text()
    assert "autoconnect" in page and "RTCPeerConnection" in page


async def test_metrics_endpoint_serves_prometheus_text(base_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = await resp.text()
    for name in (
        "voice_agent_voice_to_voice_seconds",
        "voice_agent_barge_in_pause_seconds",
        "voice_agent_speculative_replies",
        "voice_agent_active_calls",
    ):
        assert name in body


async def test_a_token_guards_the_page_offers_and_metrics(settings: Settings) -> None:
    server = LocalServer(Models(settings=settings), token="s3cret-page-token")
    port = free_port()
    await server.start("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    try:
        # like a browser, keep cookies from an IP-address host (aiohttp refuses by default)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for path in ("/", "/metrics"):
                assert (await http.get(url + path)).status == 401
            assert (await http.post(url + "/offer", data=b"{}")).status == 401
            assert (await http.get(url + "/?token=wrong")).status == 401
            assert (await http.get(url + "/healthz")).status == 200  # stays open
            page = await http.get(url + "/?token=s3cret-page-token")
            assert page.status == 200
            # the page's own requests now carry the cookie it was given
            offer = await http.post(
                url + "/offer", data=b"not json", headers={"Content-Type": "application/json"}
            )
            assert offer.status == 400
        async with aiohttp.ClientSession() as other:
            auth = {"Authorization": "Bearer s3cret-page-token"}
            assert (await other.get(url + "/metrics", headers=auth)).status == 200
    finally:
        await server.stop()


async def test_browser_audio_is_decoded_one_frame_after_it_arrives() -> None:
    """aiortc's audio jitter buffer holds four frames (80 ms) before decoding by default; the
    call shortens it to one. This pins the private access in `shorten_audio_jitter_buffer`:
    if aiortc renames its receiver's attributes, this fails rather than the calls quietly
    getting 60 ms slower."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from worker.local.webrtc import AUDIO_PREFETCH, WebRTCCall

    browser = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    browser.addTransceiver("audio", direction="sendrecv")
    browser.createDataChannel("events")
    await browser.setLocalDescription(await browser.createOffer())
    call = WebRTCCall("pin-jitter")
    try:
        await call.answer(browser.localDescription.sdp, "offer")
        audio = [r for r in call.pc.getReceivers() if r.track.kind == "audio"]
        assert len(audio) == 1
        buffer = audio[0]._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert buffer._prefetch == AUDIO_PREFETCH == 1
        assert buffer.capacity == 16
        # and the default it replaces is still aiortc's four frames (else revisit the note)
        from aiortc import RTCRtpReceiver

        fresh = RTCRtpReceiver("audio", call.pc.getTransceivers()[0].receiver.transport)
        assert fresh._RTCRtpReceiver__jitter_buffer._prefetch == 4  # type: ignore[attr-defined]
    finally:
        await call.close()
        await browser.close()
