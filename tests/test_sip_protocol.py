"""The SIP/RTP transport without models: parsers, jitter buffer, DTMF, and the UDP server
answering hand-made (and broken) messages from a raw socket.

The server's ``on_call`` here only holds the call (or hangs up / transfers as the agent's
tools would): the session side is covered by the SIPp and baresip tests in test_sip.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from telephony import rtp, sdp
from telephony.sip import SipCall, SipServer, SIPSettings
from telephony.sip_message import SipParseError, parse

from .sip_tools import RawSip, invite

OFFER = (
    "v=0\r\no=a 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 9 8 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


# -- parsers --------------------------------------------------------------------------------


def test_parse_request_with_compact_and_folded_headers() -> None:
    raw = (
        b"INVITE sip:agent@host SIP/2.0\r\nv: SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bKx\r\n"
        b"f: <sip:a@b>;tag=1\r\nt: <sip:agent@host>\r\ni: abc\r\nCSeq: 7 INVITE\r\n"
        b"Subject: a long\r\n  folded line\r\nl: 4\r\n\r\nbodyEXTRA"
    )
    msg = parse(raw)
    assert msg.method == "INVITE" and msg.call_id == "abc" and msg.cseq == (7, "INVITE")
    assert msg.branch == "z9hG4bKx" and msg.body == b"body"
    assert msg.get("subject") == "a long folded line"


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"\x00\xff garbage \x13\x37", 400, "not UTF-8"),
        (b"hello there\r\n\r\n", 400, "not a SIP request line"),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", 400, "missing"),
        (b"INVITE sip:a@b SIP/3.0\r\nVia: x\r\n\r\n", 505, "version"),
        (
            b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\n"
            b"To: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n\r\n",
            400, "CSeq",
        ),
        (
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\n"
            b"To: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 99\r\n\r\nab",
            400, "Content-Length",
        ),
        (b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n", 513, "too large"),
    ],
)  # fmt: skip
def test_parse_errors_carry_their_status(raw: bytes, status: int, reason: str) -> None:
    with pytest.raises(SipParseError) as e:
        parse(raw)
    assert e.value.status == status
    assert reason in e.value.reason


def test_sdp_negotiation_keeps_the_callers_preference_and_dtmf() -> None:
    neg = sdp.negotiate(sdp.parse(OFFER), ["PCMU", "PCMA"])
    assert neg.send_pt == 8 and neg.law == "alaw"  # G722 skipped, PCMA preferred over PCMU
    assert neg.codecs == {8: "alaw", 0: "ulaw"} and neg.dtmf_pt == 101
    assert neg.remote == ("10.0.0.5", 30000)
    answer = sdp.SessionWriter("127.0.0.1", 12000).answer(neg)
    assert "m=audio 12000 RTP/AVP 8 0 101" in answer and "a=sendrecv" in answer
    only_ulaw = sdp.negotiate(sdp.parse(OFFER), ["PCMU"])
    assert only_ulaw.codecs == {0: "ulaw"}


def test_sdp_without_a_common_codec_or_address_is_refused() -> None:
    g722 = OFFER.replace("RTP/AVP 9 8 0 101", "RTP/AVP 9")
    with pytest.raises(sdp.NoCommonCodec):
        sdp.negotiate(sdp.parse(g722), ["PCMU", "PCMA"])
    with pytest.raises(sdp.NoCommonCodec):
        sdp.parse(OFFER.replace("m=audio", "m=video"))
    with pytest.raises(sdp.SdpError):
        sdp.parse("v=0\r\nm=audio 1 RTP/AVP 0\r\n")
    hold = sdp.negotiate(sdp.parse(OFFER.replace("a=sendrecv", "a=sendonly")), ["PCMU"])
    assert hold.direction == "recvonly"


# -- RTP ------------------------------------------------------------------------------------


def _pkt(seq: int, ssrc: int = 1, pt: int = 0, payload: bytes | None = None) -> rtp.RtpPacket:
    return rtp.RtpPacket(pt, seq & 0xFFFF, seq * 160, ssrc, payload or bytes([seq % 256]) * 160)


def test_rtp_round_trip_and_rejects() -> None:
    p = _pkt(5)
    p.marker = True
    q = rtp.parse(p.to_bytes())
    assert (q.pt, q.seq, q.timestamp, q.ssrc, q.payload, q.marker) == (
        0, 5, 800, 1, p.payload, True,
    )  # fmt: skip
    with pytest.raises(rtp.RtpError):
        rtp.parse(b"\x80\x00")
    with pytest.raises(rtp.RtpError):
        rtp.parse(b"\x40" + bytes(20))  # version 1
    padded = bytearray(p.to_bytes() + b"\x00\x00\x03")
    padded[0] |= 0x20
    assert rtp.parse(bytes(padded)).payload == p.payload


def test_jitter_buffer_reorders_and_fills_losses() -> None:
    jb = rtp.JitterBuffer(depth=3)
    out: list[bytes | None] = []
    for seq in [65534, 0, 65535, 1, 3, 4, 5, 6, 2]:  # wraps, swaps, loses 2 (late)
        out += jb.push(_pkt(seq))
    marks = [None if p is None else p[0] for p in out]
    assert marks == [65534 % 256, 65535 % 256, 0, 1, None, 3, 4, 5, 6]
    assert jb.late == 1 and jb.lost == 1
    assert jb.push(_pkt(6)) == []  # duplicate of a released packet is late, not replayed


def test_jitter_buffer_restarts_on_a_new_source() -> None:
    jb = rtp.JitterBuffer(depth=3)
    assert len(jb.push(_pkt(10))) == 1
    assert len(jb.push(_pkt(500, ssrc=2))) == 1  # a new SSRC starts a new stream


def test_dtmf_events_are_reported_once() -> None:
    rx = rtp.DtmfReceiver()
    seen = []
    for i, flags in enumerate([0, 0, 0x80, 0x80, 0x80]):
        payload = struct.pack("!BBH", 11, flags | 10, 160 * (i + 1))
        d = rx.push(rtp.RtpPacket(101, 100 + i, 8000, 7, payload))
        if d:
            seen.append(d)
    seen.append(rx.push(rtp.RtpPacket(101, 110, 9600, 7, struct.pack("!BBH", 5, 10, 160))) or "")
    assert seen == ["#", "5"]


# -- the server over a real UDP socket -------------------------------------------------------


Hook = Callable[[SipCall], Awaitable[Any]]


@pytest_asyncio.fixture
async def sip_server() -> AsyncIterator[Callable[..., Awaitable[SipServer]]]:
    servers: list[SipServer] = []

    async def make(hook: Hook | None = None, **config: Any) -> SipServer:
        async def hold(call: SipCall) -> None:
            if hook is not None:
                await hook(call)
            await call.ended.wait()

        server = SipServer(SIPSettings(listen="127.0.0.1:0", **config), on_call=hold)
        await server.start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.stop()


async def _ask(ua: RawSip, data: str | bytes, target: tuple[str, int]) -> tuple[int, str]:
    ua.send(data, target)
    return await asyncio.to_thread(ua.recv_status)


def _ack(text: str, target: tuple[str, int], port: int, cseq: int = 1) -> str:
    to = re.search(r"^To: (.*)$", text, re.M | re.I)
    call_id = re.search(r"^Call-ID: (.*)$", text, re.M | re.I)
    assert to and call_id
    return (
        f"ACK sip:agent@{target[0]}:{target[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ack{cseq};rport\r\n"
        f"From: <sip:tester@127.0.0.1:{port}>;tag=t1\r\nTo: {to.group(1).strip()}\r\n"
        f"Call-ID: {call_id.group(1).strip()}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
    )


def _as(request: str, method: str) -> str:
    """The same request with another method."""
    return request.replace("INVITE sip", f"{method} sip", 1).replace(
        "CSeq: 1 INVITE", f"CSeq: 1 {method}"
    )


def _in_dialog(method: str, text: str, target: tuple[str, int], port: int, cseq: int) -> str:
    return (
        _ack(text, target, port, cseq)
        .replace("ACK", method)
        .replace(f"branch=z9hG4bK-ack{cseq}", f"branch=z9hG4bK-{method.lower()}{cseq}")
    )


async def _answered_call(server: SipServer, ua: RawSip, call_id: str) -> str:
    code, text = await _ask(ua, invite(server.address, ua.port, call_id=call_id), server.address)
    assert code == 200, text
    assert "m=audio" in text and "telephone-event" in text
    ua.send(_ack(text, server.address, ua.port), server.address)
    return text


async def test_malformed_messages_get_errors_and_a_call_still_works(sip_server: Any) -> None:
    server = await sip_server()
    target = server.address
    ua = RawSip()
    try:
        code, text = await _ask(ua, b"\x16\x03\x01 definitely not sip", target)
        assert code == 400
        missing = invite(target, ua.port, call_id="m1").replace("Call-ID: m1\r\n", "")
        code, text = await _ask(ua, missing, target)
        assert code == 400 and "Call-ID" in text
        g722 = invite(target, ua.port, call_id="m2", branch="z9hG4bK-2", sdp=(
            "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n"
        ))  # fmt: skip
        code, text = await _ask(ua, g722, target)
        assert code == 488
        bye = _in_dialog("BYE", "To: <sip:agent@x>;tag=nope\r\nCall-ID: ghost\r\n", target,
                         ua.port, 2)  # fmt: skip
        code, _ = await _ask(ua, bye, target)
        assert code == 481
        sub = _as(invite(target, ua.port, call_id="m3", branch="z9hG4bK-3"), "SUBSCRIBE")
        code, _ = await _ask(ua, sub, target)
        assert code == 405
        odd = _as(invite(target, ua.port, call_id="m4", branch="z9hG4bK-4"), "FROBNICATE")
        code, _ = await _ask(ua, odd, target)
        assert code == 501
        assert server.stats["malformed"] == 2
        # ...and the server still answers a normal call
        text = await _answered_call(server, ua, "good")
        await asyncio.sleep(0.1)
        assert len(server.calls) == 1
        code, _ = await _ask(ua, _in_dialog("BYE", text, target, ua.port, 2), target)
        assert code == 200
        await asyncio.sleep(0.1)
        assert not server.calls
    finally:
        ua.close()


async def test_retransmitted_invite_gets_the_same_answer(sip_server: Any) -> None:
    server = await sip_server()
    ua = RawSip()
    try:
        msg = invite(server.address, ua.port, call_id="re")
        code, first = await _ask(ua, msg, server.address)
        code2, second = await _ask(ua, msg, server.address)
        assert code == code2 == 200 and first == second and len(server.calls) == 1
    finally:
        ua.close()


async def test_options_cancel_and_reinvite(sip_server: Any) -> None:
    server = await sip_server(answer_delay=5.0)
    target = server.address
    ua = RawSip()
    try:
        opts = _as(invite(target, ua.port, call_id="o1", branch="z9hG4bK-o"), "OPTIONS")
        code, text = await _ask(ua, opts, target)
        assert code == 200 and "INVITE" in text and "REFER" in text

        ringing = invite(target, ua.port, call_id="c1", branch="z9hG4bK-c")
        ua.send(ringing, target)
        code, _ = await asyncio.to_thread(ua.recv_status, False)
        assert code == 100
        code, _ = await asyncio.to_thread(ua.recv_status, False)
        assert code == 180
        cancel = (ringing.split("\r\n\r\n")[0].replace("INVITE sip", "CANCEL sip", 1)
                  .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
                  .replace("Content-Type: application/sdp\r\n", "")
                  .replace(re.search(r"Content-Length: \d+", ringing).group(0),  # type: ignore[union-attr]
                           "Content-Length: 0")) + "\r\n\r\n"  # fmt: skip
        ua.send(cancel, target)
        got = {await asyncio.to_thread(ua.recv_status) for _ in range(2)}
        assert {c for c, _ in got} == {200, 487}
        await asyncio.sleep(0.1)
        assert not server.calls

        server.config.answer_delay = 0
        text = await _answered_call(server, ua, "r1")
        call = server.calls["r1"]
        assert call.rtp is not None and call.rtp.remote == ("127.0.0.1", 40000)
        moved = invite(target, ua.port, call_id="r1", branch="z9hG4bK-r2").replace(
            "CSeq: 1 INVITE", "CSeq: 2 INVITE").replace("40000", "40100")  # fmt: skip
        to = re.search(r"^To: (.*)$", text, re.M)
        assert to is not None
        moved = re.sub(r"^To: .*$", f"To: {to.group(1).strip()}", moved, flags=re.M)
        code, answer = await _ask(ua, moved, target)
        assert code == 200 and "m=audio" in answer
        assert call.rtp.remote == ("127.0.0.1", 40100)  # media follows the re-INVITE
    finally:
        ua.close()


async def test_max_calls_answers_486(sip_server: Any) -> None:
    server = await sip_server(max_calls=2)
    uas = [RawSip() for _ in range(3)]
    try:
        for i, ua in enumerate(uas[:2]):
            await _answered_call(server, ua, f"busy{i}")
        code, _ = await _ask(uas[2], invite(server.address, uas[2].port, call_id="busy2"),
                             server.address)  # fmt: skip
        assert code == 486
        server.draining = True
        code, text = await _ask(uas[2], invite(server.address, uas[2].port, call_id="busy3",
                                               branch="z9hG4bK-d"), server.address)  # fmt: skip
        assert code == 503 and "Retry-After" in text
    finally:
        for ua in uas:
            ua.close()


def _digest(text: str, method: str, uri: str, user: str, password: str) -> str:
    realm = re.search(r'realm="([^"]+)"', text)
    nonce = re.search(r'nonce="([^"]+)"', text)
    assert realm and nonce
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"{user}:{realm.group(1)}:{password}"), md5(f"{method}:{uri}")
    resp = md5(f"{ha1}:{nonce.group(1)}:00000001:abc:auth:{ha2}")
    return (
        f'Authorization: Digest username="{user}", realm="{realm.group(1)}", '
        f'nonce="{nonce.group(1)}", uri="{uri}", response="{resp}", algorithm=MD5, '
        f'qop=auth, nc=00000001, cnonce="abc"\r\n'
    )


async def test_allow_list_and_digest_authentication(sip_server: Any) -> None:
    closed = await sip_server(allow=[])
    ua = RawSip()
    try:
        code, _ = await _ask(ua, invite(closed.address, ua.port, call_id="a0"), closed.address)
        assert code == 403  # not on the allow-list and no credentials configured

        server = await sip_server(allow=["10.9.9.0/24"], username="alice", password="pw",
                                  max_auth_failures=3)  # fmt: skip
        target = server.address
        uri = f"sip:agent@{target[0]}:{target[1]}"
        code, challenge = await _ask(ua, invite(target, ua.port, call_id="a1"), target)
        assert code == 401 and 'qop="auth"' in challenge
        wrong = invite(target, ua.port, call_id="a1", branch="z9hG4bK-a2",
                       extra=_digest(challenge, "INVITE", uri, "alice", "wrong"))  # fmt: skip
        code, _ = await _ask(ua, wrong.replace("CSeq: 1", "CSeq: 2"), target)
        assert code == 401
        good = invite(target, ua.port, call_id="a1", branch="z9hG4bK-a3",
                      extra=_digest(challenge, "INVITE", uri, "alice", "pw"))  # fmt: skip
        code, _ = await _ask(ua, good.replace("CSeq: 1", "CSeq: 3"), target)
        assert code == 200
        for i in range(3):  # repeated failures lock the source out
            bad = invite(target, ua.port, call_id=f"x{i}", branch=f"z9hG4bK-x{i}",
                         extra=_digest(challenge, "INVITE", uri, "alice", "nope"))  # fmt: skip
            code, text = await _ask(ua, bad, target)
        assert code == 403 and "Too Many" in text
    finally:
        ua.close()


async def test_agent_hangup_sends_bye_and_transfer_sends_refer(sip_server: Any) -> None:
    async def agent(call: SipCall) -> None:
        await asyncio.sleep(0.3)
        if call.sip_call_id == "h1":
            await call.hangup()
        else:
            await call.transfer("sip:desk@10.0.0.9")

    server = await sip_server(agent)
    target = server.address
    ua = RawSip()
    try:
        await _answered_call(server, ua, "h1")
        data, _ = await asyncio.to_thread(ua.sock.recvfrom, 65535)
        bye = parse(data)
        assert bye.method == "BYE" and bye.call_id == "h1"
        assert bye.get("to") is not None and "tag=t1" in (bye.get("to") or "")
        ua.send(_reply(bye, 200), target)

        await _answered_call(server, ua, "t1")
        data, _ = await asyncio.to_thread(ua.sock.recvfrom, 65535)
        refer = parse(data)
        assert refer.method == "REFER" and refer.get("refer-to") == "<sip:desk@10.0.0.9>"
        ua.send(_reply(refer, 202), target)
        dialog = f"To: {refer.get('from')}\r\nCall-ID: {refer.call_id}\r\n"
        notify = _in_dialog("NOTIFY", dialog, target, ua.port, 5)
        notify = notify.replace("Content-Length: 0\r\n\r\n",
                                "Event: refer\r\nContent-Type: message/sipfrag\r\n"
                                "Content-Length: 16\r\n\r\nSIP/2.0 200 OK\r\n")  # fmt: skip
        ua.send(notify, target)
        seen = []
        for _ in range(2):
            data, _ = await asyncio.to_thread(ua.sock.recvfrom, 65535)
            msg = parse(data)
            seen.append(msg.method or msg.status)
            if msg.method == "BYE":
                ua.send(_reply(msg, 200), target)
        assert seen == [200, "BYE"]  # NOTIFY acknowledged, then the agent leaves the call
    finally:
        ua.close()


def _reply(req: Any, status: int) -> str:
    lines = [f"SIP/2.0 {status} OK"]
    for k in ("via", "from", "to", "call-id", "cseq"):
        lines.append(f"{k.title()}: {req.get(k)}")
    return "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n"


async def test_rtp_session_paces_frames_fills_silence_and_sends_dtmf() -> None:
    import socket

    from telephony.audio_io import PacedAudioOutput

    heard: list[int] = []
    session = rtp.RtpSession(
        output=PacedAudioOutput(sample_rate=8000), on_audio=lambda pcm: heard.append(pcm.size),
        on_dtmf=lambda d: None, jitter_depth=3,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: session, local_addr=("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    session.remote = peer.getsockname()
    session.dtmf_pt = 101
    session.start()
    await asyncio.sleep(0.5)
    session.queue_dtmf("5")
    await asyncio.sleep(0.3)
    await session.stop()
    packets = []
    while True:
        try:
            packets.append(rtp.parse(peer.recv(2048)))
        except BlockingIOError:
            break
    peer.close()
    audio = [p for p in packets if p.pt == 0]
    tones = [p for p in packets if p.pt == 101]
    assert 30 <= len(audio) <= 45  # ~20 ms pacing over 0.8 s, less the tone
    seqs = [p.seq for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert {p.payload[0] for p in tones} == {5} and sum(p.payload[1] >> 7 for p in tones) == 3
    assert len({p.timestamp for p in tones}) == 1  # one event, one timestamp
    # nothing arrived from the caller, so the session fed silence at the caller's pace
    assert session.filled >= 25 and set(heard) == {160}


# -- the parts the server is built from ------------------------------------------------------


async def test_retransmission_follows_t1_t2_and_stops_at_timer_b(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from telephony import sip_transactions as tx

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(tx.asyncio, "sleep", sleep)
    sent: list[int] = []
    assert not await tx.retransmit(lambda: sent.append(1), lambda: False)
    assert slept[:5] == [0.5, 1.0, 2.0, 4.0, 4.0] and sum(slept) >= tx.TIMER_B
    assert len(sent) == len(slept)  # a copy after every wait
    slept.clear()
    answered = iter([False, False, True])
    assert await tx.retransmit(lambda: None, lambda: next(answered))
    assert slept == [0.5, 1.0, 2.0]


def test_admission_allow_list_digest_and_lock_out() -> None:
    from telephony.sip_auth import Admission, DigestAuth

    closed = Admission(["127.0.0.0/8"], None, 3)
    assert closed.check("127.0.0.1", "INVITE", None).admit
    assert closed.check("198.51.100.7", "INVITE", None).status == 403
    door = Admission([], DigestAuth("r", "alice", "pw"), 3)
    first = door.check("198.51.100.7", "INVITE", None)
    assert first.status == 401 and first.challenge and not first.failed_login
    wrong = 'Digest username="alice", realm="r", nonce="1.x", uri="sip:a", response="0"'
    for _ in range(3):
        assert door.check("198.51.100.7", "INVITE", wrong).failed_login
    locked = door.check("198.51.100.7", "INVITE", wrong)
    assert (locked.status, locked.reason) == (403, "Too Many Failed Attempts")
    assert door.check("198.51.100.8", "OPTIONS", None).admit  # capability probes pass
