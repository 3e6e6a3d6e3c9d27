"""Hostile input, by class: call-limit bursts, numbers and nesting, content types and origins,
WebSocket framing, and the outbound connections a default call makes.

Each test drives a real server over its real socket (aiohttp, aiortc, UDP). No models load:
what is under test is what happens before a call reaches a session, so the servers' calls
just wait (``_Held``) or the SIP server's ``on_call`` holds the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from plugins.net import free_port
from telephony import sdp, twilio, wire
from telephony.sip import SipServer, SIPSettings
from telephony.sip_message import SipParseError, parse
from worker.local.server import LocalServer
from worker.local.ws_guard import FrameHeaders
from worker.models import Models
from worker.settings import Settings

from .sip_tools import RawSip, invite

JSON = {"Content-Type": "application/json"}
HUGE = "7" * 5000  # past Python's 4,300-digit limit for int()
DEEP = "[" * 30_000 + "]" * 30_000


class _Held(LocalServer):
    """Calls wait for ``release`` instead of loading models: admission is what is tested."""

    release: asyncio.Event

    async def _run(self, call: Any, profile: Any = "web") -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 60)
        self._calls.pop(call.call_id, None)
        await call.close()


@pytest_asyncio.fixture
async def held(settings: Settings) -> AsyncIterator[tuple[str, _Held]]:
    server = _Held(Models(settings=settings), max_calls=4)
    server.release = asyncio.Event()
    port = free_port()
    await server.start("127.0.0.1", port)
    yield f"http://127.0.0.1:{port}", server
    server.release.set()
    await server.stop()


async def _browser_offer() -> tuple[RTCPeerConnection, str]:
    """A real offer from an aiortc peer (no ICE servers, so it looks nothing up either)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


# -- call limits -------------------------------------------------------------------------


async def test_a_burst_of_offers_admits_exactly_the_limit(held: tuple[str, _Held]) -> None:
    url, server = held
    peers = [await _browser_offer() for _ in range(12)]
    try:
        async with aiohttp.ClientSession() as http:

            async def post(offer: str) -> int:
                body = {"sdp": offer, "type": "offer"}
                async with http.post(url + "/offer", json=body) as resp:
                    return resp.status

            got = Counter(await asyncio.gather(*(post(o) for _, o in peers)))
        assert got == Counter({200: 4, 503: 8})
        assert server.slots.in_use == 4
        server.release.set()
        for _ in range(200):
            if not server.slots.in_use:
                break
            await asyncio.sleep(0.05)
        assert server.slots.in_use == 0, "a call that ended kept its slot"
    finally:
        for pc, _ in peers:
            await pc.close()


async def test_a_burst_of_twilio_streams_admits_exactly_the_limit(
    held: tuple[str, _Held],
) -> None:
    url, server = held
    start = {"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1"}}
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    async with aiohttp.ClientSession() as http:

        async def stream() -> int:
            try:
                ws = await http.ws_connect(url + "/twilio/media")
            except aiohttp.WSServerHandshakeError as e:
                return e.status
            sockets.append(ws)
            await ws.send_json(start)
            return 101

        got = Counter(await asyncio.gather(*(stream() for _ in range(8))))
        assert got == Counter({101: 4, 503: 4})
        assert server.slots.in_use == 4
        for ws in sockets:
            await ws.close()
        server.release.set()
        for _ in range(200):
            if not server.slots.in_use:
                break
            await asyncio.sleep(0.05)
        assert server.slots.in_use == 0


async def test_web_and_sip_calls_share_one_limit(held: tuple[str, _Held]) -> None:
    """A worker's limit counts every transport: SIP callers find it full of web calls."""
    url, server = held
    peers = [await _browser_offer() for _ in range(4)]
    sip = SipServer(
        SIPSettings(listen="127.0.0.1:0", max_calls=10),
        on_call=lambda c: c.ended.wait(),
        slots=server.slots,
    )
    await sip.start()
    ua = RawSip()
    try:
        async with aiohttp.ClientSession() as http:
            for _, offer in peers:
                body = {"sdp": offer, "type": "offer"}
                async with http.post(url + "/offer", json=body) as resp:
                    assert resp.status == 200
        ua.send(invite(sip.address, ua.port, call_id="full"), sip.address)
        code, _ = await asyncio.to_thread(ua.recv_status)
        assert code == 486
    finally:
        ua.close()
        await sip.stop()
        for pc, _ in peers:
            await pc.close()


# -- numbers, nesting, charsets, encodings: /offer -------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (f'{{"sdp": "v=0", "type": "offer", "n": {HUGE}}}'.encode(), JSON, 400, "digits"),
        (('{"sdp": ' + DEEP + "}").encode(), JSON, 400, "nests deeper"),
        (b'{"sdp": 1e400, "type": "offer"}', JSON, 400, "out of range"),
        (b'{"sdp": NaN, "type": "offer"}', JSON, 400, "NaN"),
        (b'{"sdp": "v=0", "type": "offer"}', {"Content-Type": "text/plain"}, 415, "json"),
        (b"sdp=v%3D0&type=offer", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
         "json"),
        (b"{}", {"Content-Type": "application/json; charset=klingon-9"}, 415, "charset"),
        (b'{"sdp": "\xff"}', JSON, 400, "not valid utf-8"),
        (zlib.compress(b'{"sdp": "v=0"}')[:9] + b"\x00garbage",
         {**JSON, "Content-Encoding": "deflate"}, 400, ""),
    ],
)  # fmt: skip
async def test_hostile_offer_bodies_get_4xx_with_a_reason(
    held: tuple[str, _Held], body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    url, server = held
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(url + "/offer", data=body, headers=headers) as resp:
            assert resp.status == status, await resp.text()
            assert reason.lower() in (await resp.text()).lower()
        async with http.get(url + "/healthz") as resp:
            assert (await resp.json())["calls"] == 0
    assert server.slots.in_use == 0, "a refused offer kept its slot"


async def test_offers_from_another_sites_page_are_refused(held: tuple[str, _Held]) -> None:
    url, _ = held
    _, offer = await _browser_offer()
    body = {"sdp": offer, "type": "offer"}
    async with aiohttp.ClientSession() as http:
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
            async with http.post(url + "/offer", json=body, headers={"Origin": origin}) as resp:
                assert resp.status == 403
                assert "cross-origin" in (await resp.json())["error"]
        # DNS rebinding: a foreign name that resolves to loopback is not this server
        port = url.rsplit(":", 1)[1]
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        async with http.post(url + "/offer", json=body, headers=rebound) as resp:
            assert resp.status == 403
            assert "Host" in (await resp.json())["error"]
        # the page's own origin, by any loopback name, is fine (here: a bad SDP type → 400)
        bad = {"sdp": offer, "type": "answer"}
        for own in (url, url.replace("127.0.0.1", "localhost")):
            async with http.post(url + "/offer", json=bad, headers={"Origin": own}) as resp:
                assert resp.status == 400
        # no Origin: not a page's doing (a proxy in front may send any Host)
        proxied = {"Host": "voice.example.com"}
        async with http.post(url + "/offer", json=bad, headers=proxied) as resp:
            assert resp.status == 400
        # a page from another site opening a Media Streams socket is refused too
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(url + "/twilio/media", origin="http://evil.example")
        assert e.value.status == 403


async def test_allowed_origins_let_a_proxied_page_in(settings: Settings) -> None:
    server = LocalServer(Models(settings=settings), allowed_origins=["https://voice.example.com"])
    port = free_port()
    await server.start("127.0.0.1", port)
    try:
        page = {"Origin": "https://voice.example.com", "Host": "voice.example.com"}
        async with aiohttp.ClientSession() as http:
            body = {"sdp": "v=0", "type": "answer"}
            async with http.post(f"http://127.0.0.1:{port}/offer", json=body, headers=page) as r:
                assert r.status == 400  # past the origin check, refused for its SDP
            page["Origin"] = "https://other.example.com"
            async with http.post(f"http://127.0.0.1:{port}/offer", json=body, headers=page) as r:
                assert r.status == 403
    finally:
        await server.stop()


# -- Twilio Media Streams ------------------------------------------------------------------

START = {"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1"}}


def _start(**fields: Any) -> str:
    return json.dumps({**START, "start": {**START["start"], **fields}})


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_start(mediaFormat="audio/x-mulaw"), "start.mediaFormat must be an object"),
        (_start(customParameters=["from", "+1555"]), "customParameters must be an object"),
        (_start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": "abc"}), "sampleRate"),
        (_start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 8000.5}), "unsupported"),
        ('{"event": "start", "start": {"streamSid": "MZ1", "mediaFormat": {"sampleRate": 1e400}}}',
         "out of range"),
        ('{"event": "start", "start": {"streamSid": "MZ1", "mediaFormat": {"sampleRate": '
         + HUGE + "}}}", "digits"),
        ('{"event": "media", "media": ' + DEEP + "}", "nests deeper"),
        ('{"event": "media", "media": {"payload": 5}}', "media.payload must be a string"),
        ('{"event": ["start"]}', "message.event must be a string"),
    ],
)  # fmt: skip
async def test_hostile_twilio_messages_close_with_1003_and_a_reason(
    held: tuple[str, _Held], message: str, reason: str
) -> None:
    url, server = held
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url + "/twilio/media")
        await ws.send_str(message)
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1003
        assert reason in (msg.extra or "")
    assert server.slots.in_use == 0


def test_a_non_ascii_twilio_signature_is_just_invalid() -> None:
    url = "wss://example.test/twilio/media"
    good = twilio.expected_signature("token", url)
    assert twilio.signature_valid("token", url, good)
    assert not twilio.signature_valid("token", url, "sïgnature✓")
    assert not twilio.signature_valid("token", url, good + "é")


def _ws_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def _frame(payload: bytes, *, masked: bool, opcode: int = 1) -> bytes:
    assert len(payload) < 126
    if not masked:
        return bytes([0x80 | opcode, len(payload)]) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def _close_code(sock: socket.socket) -> int:
    data = b""
    while len(data) < 4:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[0] & 0x0F == 8, f"expected a close frame, got {data[:16]!r}"
    return int(struct.unpack("!H", data[2:4])[0])


async def test_an_unmasked_client_frame_closes_with_1002(held: tuple[str, _Held]) -> None:
    url, _ = held
    port = int(url.rsplit(":", 1)[1])

    def talk(masked: bool) -> int:
        sock = _ws_handshake(port)
        try:
            sock.sendall(_frame(json.dumps(START).encode()[:120], masked=True))  # fine
            sock.sendall(_frame(b'{"event": "connected"}', masked=masked))
            if masked:  # then an unknown event, to get a close from the server to read
                sock.sendall(_frame(b'{"event": "nope"}', masked=True))
            return _close_code(sock)
        finally:
            sock.close()

    assert await asyncio.to_thread(talk, False) == 1002
    assert await asyncio.to_thread(talk, True) == 1003  # the control: masked frames are read


def test_frame_headers_follow_lengths_across_chunks() -> None:
    frames = FrameHeaders()
    masked = _frame(b"x" * 100, masked=True) + bytes([0x81, 0x80 | 126, 1, 0]) + os.urandom(4)
    data = masked + b"y" * 256 + _frame(b"ok", masked=True)
    for i in range(0, len(data), 7):
        frames.feed(data[i : i + 7])
    assert not frames.unmasked
    frames.feed(_frame(b"bad", masked=False))
    assert frames.unmasked


# -- SIP and SDP -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [("Content-Length", HUGE), ("CSeq", HUGE + " OPTIONS"), ("Max-Forwards", HUGE),
     ("CSeq", "٣ OPTIONS"), ("Max-Forwards", "²")],
)  # fmt: skip
def test_sip_numbers_of_any_length_are_a_400(header: str, value: str) -> None:
    msg = (
        "OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"
        "\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\nCall-ID: n1\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    start = msg.index(header + ":")
    end = msg.index("\r\n", start)
    with pytest.raises(SipParseError) as e:
        parse((msg[:start] + f"{header}: {value}" + msg[end:]).encode())
    assert e.value.status == 400 and header in e.value.reason


@pytest.mark.parametrize(
    "sdp_body",
    [
        f"m=audio {HUGE} RTP/AVP 0",
        f"m=audio 40000 RTP/AVP 0 {HUGE}",
        "m=audio 40000 RTP/AVP 0 ²",
        "m=audio 40000 RTP/AVP 0 300",
        "m=audio 99999 RTP/AVP 0",
    ],
)
async def test_an_invite_whose_sdp_numbers_are_hostile_gets_a_final_answer(
    sdp_body: str,
) -> None:
    body = (
        f"v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{sdp_body}\r\n"
    )
    with pytest.raises(sdp.SdpError):
        sdp.parse(body)
    server = SipServer(SIPSettings(listen="127.0.0.1:0"), on_call=lambda c: c.ended.wait())
    await server.start()
    ua = RawSip()
    try:
        ua.send(invite(server.address, ua.port, call_id="sdp", sdp=body), server.address)
        code, text = await asyncio.to_thread(ua.recv_status)
        assert code == 400 and "Bad SDP" in text
        assert not server.calls and server.slots.in_use == 0
    finally:
        ua.close()
        await server.stop()


async def test_an_invite_that_fails_inside_still_gets_a_final_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever breaks while an INVITE is handled, the caller hears 500, not 100 forever."""
    server = SipServer(SIPSettings(listen="127.0.0.1:0"), on_call=lambda c: c.ended.wait())

    async def broken(*_: Any) -> None:
        raise RuntimeError("simulated failure opening media")

    monkeypatch.setattr(server, "_open_media", broken)
    await server.start()
    ua = RawSip()
    try:
        ua.send(invite(server.address, ua.port, call_id="boom"), server.address)
        code, _ = await asyncio.to_thread(ua.recv_status)
        assert code == 500
        assert not server.calls and server.slots.in_use == 0
    finally:
        ua.close()
        await server.stop()


def test_wire_guards() -> None:
    assert wire.integer(" 42 ", "n") == 42
    for bad in (HUGE, "²", "-1", "1e3", "", "0x10", True):
        with pytest.raises(wire.WireError):
            wire.integer(bad, "n")
    with pytest.raises(wire.WireError):
        wire.integer("70000", "port", hi=65535)
    assert wire.load_json('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for bad in (DEEP, HUGE, "1e400", "NaN", "-Infinity", '{"a": '):
        with pytest.raises(wire.WireError):
            wire.load_json(bad)
    assert wire.load_json('"[[[[[[[[[[[[[[[[[[[[[[[[["') == "[" * 25  # brackets in a string


# -- outbound connections -------------------------------------------------------------------


async def test_a_default_call_looks_nothing_up_and_contacts_no_ice_server(
    held: tuple[str, _Held], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiortc's own default is a public STUN server; the worker's is none at all."""
    looked_up: list[str] = []
    real_gethostbyname, real_getaddrinfo = socket.gethostbyname, socket.getaddrinfo

    def gethostbyname(host: str) -> str:
        looked_up.append(host)
        return real_gethostbyname(host)

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        looked_up.append(str(host))
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket, "gethostbyname", gethostbyname)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url, server = held
    pc, offer = await _browser_offer()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/offer", json={"sdp": offer, "type": "offer"}) as resp:
                assert resp.status == 200
                answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.sleep(1.0)  # let both sides gather and check their candidates
        assert len(server.calls()) == 1
    finally:
        await pc.close()
    outside = [h for h in looked_up if not _local_name(h)]
    assert outside == [], f"the call looked up {outside}"


def _local_name(host: str) -> bool:
    if host in ("localhost", "None", ""):
        return True
    with contextlib.suppress(ValueError):
        import ipaddress

        ipaddress.ip_address(host)
        return True  # an address literal is no lookup
    return False


def test_ice_servers_setting_maps_turn_credentials(settings: Settings) -> None:
    assert settings.http.ice_servers == []  # the default: nothing outside the machine
    http = settings.http.model_copy(
        update={
            "ice_servers": ["stun:stun.example.test:3478", "turn:turn.example.test:3478"],
            "ice_username": "u",
        }
    )
    stun, turn = http.rtc_ice_servers()
    assert stun.urls == "stun:stun.example.test:3478" and stun.username is None
    assert turn.username == "u"
    with pytest.raises(ValueError):
        type(settings.http)(ice_servers=["http://stun.example.test"])
