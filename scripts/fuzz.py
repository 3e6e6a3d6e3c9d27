"""Fuzz every parser that faces the network (and the settings file) with mutated and random
inputs, and check that each input gets its protocol's error, no exception escapes, and memory
stays bounded. Deterministic (seeded); CI runs it from scripts/test.sh.

    python scripts/fuzz.py [--n 10000] [--seed 1]

Targets: the SIP server over real UDP, SDP, RTP with the jitter buffer and DTMF, Twilio Media
Streams messages, the WebRTC offer endpoint over real HTTP, and the TOML settings file.
Inputs come in classes, each generated rather than listed by hand:

- ``mutation``: valid messages with random edits, plus random bytes;
- ``numbers``: every numeric field of a valid message replaced by numbers of any length
  (up to 20,000 digits), signs, unicode digits, exponents, NaN and infinities;
- ``types``: every JSON field replaced by a value of each wrong type;
- ``nesting``: a JSON field nested up to 100,000 levels deep;
- ``content``: offers with every kind of content type, charset and content encoding;
- ``burst``: many calls at once against a call limit (offers, Twilio streams, INVITEs),
  where exactly the limit must be admitted.

Prints one line per target and class with its input count, the outcomes and the memory
growth; exits 1 if anything escaped (an exception, a 5xx, an unanswered SIP request, a burst
that admitted more or fewer than the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIP_SEEDS = [
    (
        "INVITE sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{n};"
        "rport\r\nFrom: <sip:fuzz@127.0.0.1>;tag=f{n}\r\nTo: <sip:agent@127.0.0.1>\r\n"
        "Call-ID: fuzz-{n}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:fuzz@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n"
        "Content-Length: {len}\r\n\r\n{sdp}"
    ),
    (
        "OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKo{n}\r\n"
        "From: <sip:fuzz@127.0.0.1>;tag=o{n}\r\nTo: <sip:agent@127.0.0.1>\r\n"
        "Call-ID: opt-{n}\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ),
    (
        "BYE sip:agent@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKb{n}\r\n"
        "f: <sip:fuzz@127.0.0.1>;tag=f{n}\r\nt: <sip:agent@127.0.0.1>;tag=x{n}\r\ni: fuzz-{n}\r\n"
        "CSeq: 2 BYE\r\nl: 0\r\n\r\n"
    ),
    (
        "CANCEL sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{n}"
        "\r\nFrom: <sip:fuzz@127.0.0.1>;tag=f{n}\r\nTo: <sip:agent@127.0.0.1>\r\n"
        "Call-ID: fuzz-{n}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    ),
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKr{n}\r\nCSeq: 1 BYE\r\n\r\n",
]
SDP_SEED = (
    "v=0\r\no=f 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)
TWILIO_SEEDS = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "callSid": "CA1",
     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
    {"event": "media", "streamSid": "MZ1", "media": {"payload": "//////////8="}},
    {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "5"}},
    {"event": "mark", "streamSid": "MZ1", "mark": {"name": "m1"}},
    {"event": "stop", "streamSid": "MZ1", "stop": {}},
]  # fmt: skip
TOML_SEED = (
    '[tts]\nvoice = "am_adam"\nspeed = 1.1\n[llm]\nbase_url = "http://127.0.0.1:8000/v1"\n'
    'max_tokens = 100\n[sip]\nlisten = "127.0.0.1:5060"\nallow = ["10.0.0.0/8"]\n'
    '[turn]\nbackchannels = ["uh-huh", "okay"]\nmin_endpointing_delay = 0.4\n'
)
JUNK = [
    b"\x00", b"\xff\xfe", b"\r\n", b"\r\n\r\n", b";", b",", b"<", b">", b'"', b"=", b":", b"%",
    b"\\", b"9" * 12, b"-1", b"A" * 300, "é".encode(), b"\x80\x81", b"[", b"]",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: bit flips, inserted junk, deleted or duplicated spans, cut lines."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = rng.choice(JUNK)
        elif op == 2 and b:
            end = min(len(b), pos + rng.randint(1, 40))
            del b[pos:end]
        elif op == 3 and b:
            end = min(len(b), pos + rng.randint(1, 80))
            b[pos:pos] = b[pos:end] * rng.randint(1, 3)
        elif op == 4:
            del b[pos:]
        elif op == 5:
            lines = bytes(b).split(b"\r\n")
            rng.shuffle(lines)
            b = bytearray(b"\r\n".join(lines))
        else:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b)


def inputs(rng: random.Random, n: int, seeds: list[bytes]) -> list[bytes]:
    """n inputs: mostly mutated seeds, some untouched seeds, some random bytes."""
    out = []
    for i in range(n):
        r = i % 10
        if r == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 600))))
        elif r == 1:
            out.append(rng.choice(seeds))
        else:
            out.append(mutate(rng, rng.choice(seeds)))
    return out


_DIGITS = re.compile(rb"\d+")
NUMBER_FORMS = [
    "0", "-1", "+7", "-0", "007", "1.5", "1e3", "1e400", "-1e400", "0x1F", "NaN", "Infinity",
    "²", "٣", "１２", "1_000", " 7", "4294967296", "18446744073709551616", "9" * 20, "9" * 21,
]  # fmt: skip


def any_number(rng: random.Random) -> str:
    """A number as a hostile peer might write it: any length, sign, script or notation."""
    if rng.random() < 0.4:
        return rng.choice(NUMBER_FORMS)
    length = rng.choice([10, 19, 20, 21, 300, 4300, 4301, 5000, 20000, rng.randint(1, 6000)])
    return str(rng.randint(1, 9)) + "".join(str(rng.randrange(10)) for _ in range(length - 1))


def with_numbers(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to three of its digit runs replaced by :func:`any_number`."""
    runs = list(_DIGITS.finditer(data))
    if not runs:
        return data
    out = data
    for m in sorted(rng.sample(runs, min(len(runs), rng.randint(1, 3))), key=lambda m: -m.start()):
        out = out[: m.start()] + any_number(rng).encode() + out[m.end() :]
    return out


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every value in a JSON document (objects and lists included)."""
    if path:
        yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))


def _replaced(doc: Any, path: tuple[Any, ...], raw: str) -> str:
    """``doc`` as JSON text with the value at ``path`` written as the raw JSON text ``raw``."""
    marker = "\u0000fuzz\u0000"
    copy = json.loads(json.dumps(doc))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return json.dumps(copy).replace(json.dumps(marker), raw)


WRONG_TYPES = ['"x"', '""', "[]", "{}", "[1]", '{"a": 1}', "null", "true", "0", "-1", "1.5"]


def json_cases(rng: random.Random, n: int, seeds: list[Any], cls: str) -> list[bytes]:
    """n JSON texts from ``seeds``, one field each changed as class ``cls`` says."""
    out = []
    for _ in range(n):
        doc = rng.choice(seeds)
        path = rng.choice(list(_leaves(doc)))
        if cls == "numbers":
            raw = any_number(rng)
        elif cls == "types":
            raw = rng.choice(WRONG_TYPES)
        else:  # nesting
            depth = rng.choice([20, 100, 1000, 30_000, 100_000, rng.randint(2, 5000)])
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            raw = opener * depth + "1" + closer * depth
        out.append(_replaced(doc, path, raw).encode())
    return out


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


class Report:
    """Outcomes per target and input class; any escape fails the run."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.escapes = 0

    def add(
        self,
        name: str,
        n: int,
        outcomes: Counter[str],
        escapes: list[str],
        mem: float,
        cls: str = "mutation",
    ) -> None:
        self.escapes += len(escapes)
        top = ", ".join(f"{k} {v}" for k, v in outcomes.most_common(6))
        self.rows.append(
            f"{name:8} {cls:9} {n:6d} inputs  {len(escapes)} escapes  memory {mem:+6.1f} MB  "
            f"({top})"
        )
        for e in escapes[:5]:
            self.rows.append(f"           escape: {e[:300]}")


def run_cases(
    rep: Report,
    target: str,
    cls: str,
    cases: list[bytes],
    parse: Any,
    refusals: list[tuple[type[BaseException], str]],
) -> None:
    """Feed each case to ``parse``; an exception listed in ``refusals`` is that protocol's
    answer (counted under its label), any other is an escape."""
    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    before = rss_mb()
    for data in cases:
        try:
            parse(data)
            outcomes["ok"] += 1
        except Exception as e:
            label = next((name for kind, name in refusals if isinstance(e, kind)), None)
            if label is None:  # an escape: reported, not raised
                escapes.append(f"{type(e).__name__}: {e} for {data[:80]!r}")
            else:
                outcomes[label] += 1
    rep.add(target, len(cases), outcomes, escapes, rss_mb() - before, cls)


# -- targets --------------------------------------------------------------------------------


async def _until(done: Any, seconds: float) -> None:
    """Poll ``done()`` until it holds or ``seconds`` pass (the servers have no event for it)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def _answer_comes_here(data: bytes, port: int) -> bool:
    """Whether a response to ``data`` is due at our socket: its Via asks for rport, names our
    port, or cannot be read (then the server answers the source)."""
    via = re.search(rb"^(?:via|v) *:[^\r\n]*", data, re.I | re.M)
    if via is None or b"rport" in via.group(0):
        return True
    sent_by = re.search(rb"SIP/2\.0/UDP +[^;:\s]+:([^;\s]*)", via.group(0))
    return sent_by is None or sent_by.group(1) == str(port).encode()


def _status(reply: bytes) -> str:
    return reply.split(b" ", 2)[1].decode(errors="replace")[:3] if b" " in reply else "?"


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


async def fuzz_sip(rng: random.Random, n: int, rep: Report) -> None:
    from telephony.sip import SipCall, SipServer, SIPSettings

    async def hold(call: SipCall) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), 2)

    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    handler = Catch()
    logging.getLogger("telephony").addHandler(handler)
    server = SipServer(
        SIPSettings(listen="127.0.0.1:0", max_calls=4, rtp_timeout=1.0), on_call=hold
    )
    await server.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]

    def seed(i: int, n: int) -> bytes:
        return SIP_SEEDS[i].format(port=port, n=n, len=len(SDP_SEED), sdp=SDP_SEED).encode()

    seeds = [seed(i, i) for i in range(len(SIP_SEEDS))]
    outcomes: Counter[str] = Counter()
    before = rss_mb()
    for data in inputs(rng, n, seeds):
        sock.sendto(data, server.address)
        await asyncio.sleep(0.001)  # asyncio reads one datagram per loop turn
        for reply in _drain(sock):
            outcomes[_status(reply)] += 1
    await asyncio.sleep(0.5)
    for reply in _drain(sock):
        outcomes[_status(reply)] += 1
    rep.add("sip", n, outcomes, errors[:], rss_mb() - before)
    errors.clear()

    # numbers: every request must still get a final response, never only 100 Trying
    outcomes, missing = Counter(), []
    before = rss_mb()
    for k in range(n // 5):
        i = rng.randrange(len(SIP_SEEDS) - 1)  # requests only; a response gets no answer
        data = with_numbers(rng, seed(i, 1_000_000 + k))
        sock.sendto(data, server.address)
        final = ""
        deadline = time.monotonic() + 3
        while not final and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            for reply in _drain(sock):
                code = _status(reply)
                if code.isdigit() and int(code) >= 200:
                    final = code
        if not final and not _answer_comes_here(data, port):
            final = "sent to the Via's port"  # RFC 3261 18.2.2: not our socket's
        if not final:
            missing.append(f"no final response to {data!r}")
        outcomes[final or "none"] += 1
    await asyncio.sleep(0.3)
    _drain(sock)
    rep.add("sip", n // 5, outcomes, missing + errors[:], rss_mb() - before, "numbers")
    errors.clear()

    # burst: many INVITEs in one go against max_calls=4 (calls from earlier classes gone)
    outcomes, wrong = Counter(), []
    await _until(lambda: not server.calls, 10)
    rounds = 10
    for r in range(rounds):
        sent = {f"fuzz-{2_000_000 + r * 100 + k}".encode() for k in range(12)}
        for k in range(12):
            sock.sendto(seed(0, 2_000_000 + r * 100 + k), server.address)
        codes: dict[bytes, str] = {}
        deadline = time.monotonic() + 3
        while len(codes) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            for reply in _drain(sock):
                code = _status(reply)
                cid = re.search(rb"Call-ID: *(\S+)", reply, re.I)
                if cid and code in ("200", "486") and cid.group(1) in sent:
                    codes[cid.group(1)] = code
        got = Counter(codes.values())
        outcomes.update(got)
        if got != Counter({"200": 4, "486": 8}):
            wrong.append(f"burst of 12 INVITEs, limit 4: {dict(got)}")
        _drain(sock)
        await _until(lambda: not server.calls, 10)
    # the server must still answer, and its state must be bounded
    probe = SIP_SEEDS[1].format(port=port, n=999999, len=0, sdp="").encode()
    sock.sendto(probe, server.address)
    answered = False
    deadline = time.monotonic() + 3
    while not answered and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        answered |= any(b"opt-999999" in reply for reply in _drain(sock))
    if not answered:
        errors.append("the server stopped answering OPTIONS after the fuzz run")
    if len(server._responses) > 4096 or len(server.calls) > 4:
        errors.append(f"state grew: {len(server._responses)} responses, {len(server.calls)} calls")
    await server.stop()
    sock.close()
    logging.getLogger("telephony").removeHandler(handler)
    rep.add("sip", rounds * 12, outcomes, wrong + errors, 0.0, "burst")


def fuzz_sdp(rng: random.Random, n: int, rep: Report) -> None:
    from telephony import sdp

    def answer(data: bytes) -> None:
        neg = sdp.negotiate(sdp.parse(data), ["PCMU", "PCMA"])
        sdp.SessionWriter("127.0.0.1", 10000).answer(neg)

    refusals = [(sdp.NoCommonCodec, "488"), (sdp.SdpError, "400")]
    run_cases(rep, "sdp", "mutation", inputs(rng, n, [SDP_SEED.encode()]), answer, refusals)
    numbers = [with_numbers(rng, SDP_SEED.encode()) for _ in range(n // 5)]
    run_cases(rep, "sdp", "numbers", numbers, answer, refusals)


def fuzz_rtp(rng: random.Random, n: int, rep: Report) -> None:
    from telephony import rtp

    seeds = [
        struct.pack("!BBHII", 0x80, 0, 100, 16000, 7) + bytes(160),
        struct.pack("!BBHII", 0x80, 101, 101, 16000, 7) + struct.pack("!BBH", 5, 0x8A, 800),
        struct.pack("!BBHII", 0x92, 8, 102, 16160, 7) + bytes(8) + b"\x00\x01\x00\x01"
        + bytes(164),
        struct.pack("!BBHII", 0xA0, 0, 103, 16320, 7) + bytes(160) + b"\x00\x00\x03",
    ]  # fmt: skip
    jb = rtp.JitterBuffer(depth=3)
    dtmf = rtp.DtmfReceiver()
    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    before = rss_mb()
    for data in inputs(rng, n, seeds):
        try:
            pkt = rtp.parse(data)
            if pkt.pt == 101:
                dtmf.push(pkt)
            else:
                jb.push(pkt)
            outcomes["ok"] += 1
        except rtp.RtpError:
            outcomes["dropped"] += 1
        except Exception as e:  # an escape
            escapes.append(f"{type(e).__name__}: {e} for {data[:40]!r}")
        if len(jb._held) > jb.depth:
            escapes.append(f"jitter buffer holds {len(jb._held)} packets")
    rep.add("rtp", n, outcomes, escapes, rss_mb() - before)


def fuzz_twilio(rng: random.Random, n: int, rep: Report) -> None:
    from telephony import twilio

    seeds = [json.dumps(s).encode() for s in TWILIO_SEEDS]
    classes = [("mutation", inputs(rng, n, seeds))] + [
        (cls, json_cases(rng, n // 5, TWILIO_SEEDS, cls)) for cls in ("numbers", "types", "nesting")
    ]
    for cls, cases in classes:
        run_cases(
            rep, "twilio", cls, cases,
            lambda data: twilio.parse_message(data.decode("utf-8", "replace")),
            [(twilio.TwilioProtocolError, "close 1003")],
        )  # fmt: skip


BROWSER_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 "
    + ":".join(["AB"] * 32)
    + "\r\na=setup:actpass\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
)
CONTENT_TYPES = [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
    "application/json; charset=bogus-8", "application/json; charset=utf-16",
    "application/json; charset=latin-1", "application/json", "APPLICATION/JSON", "json",
    "application/json, text/plain", "application/jsonx",
]  # fmt: skip


def _server_without_models(max_calls: int, hold: asyncio.Event | None = None) -> Any:
    """A LocalServer whose calls load no models: each just ends (or waits for ``hold``)."""
    from worker.local.server import LocalServer
    from worker.models import Models
    from worker.settings import Settings

    class NoModels(LocalServer):
        async def _run(self, call: Any, profile: Any = "web") -> None:
            if hold is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hold.wait(), 30)
            self._calls.pop(call.call_id, None)
            await call.close()

    return NoModels(Models(settings=Settings()), max_calls=max_calls)


async def _post_all(
    http: Any, url: str, cases: list[tuple[bytes, dict[str, str]]], out: Counter[str]
) -> list[str]:
    import aiohttp

    escapes = []
    for data, headers in cases:
        try:
            async with http.post(url, data=data, headers=headers) as resp:
                out[str(resp.status)] += 1
                if resp.status >= 500 and resp.status != 503:
                    escapes.append(f"HTTP {resp.status} for {headers} {data[:80]!r}")
        except aiohttp.ClientError as e:  # the server hung up without an answer
            escapes.append(f"{type(e).__name__} for {headers} {data[:80]!r}")
    return escapes


async def fuzz_offer(rng: random.Random, n: int, rep: Report) -> None:
    import aiohttp

    from plugins.net import free_port

    server = _server_without_models(max_calls=10_000)
    port = free_port()
    await server.start("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/offer"
    docs = [{"sdp": BROWSER_OFFER, "type": "offer"}, {"sdp": "v=0", "type": "answer"}]
    js = {"Content-Type": "application/json"}
    seeds = [json.dumps(d).encode() for d in docs]
    content = []
    for _ in range(n // 5):
        headers = {"Content-Type": rng.choice(CONTENT_TYPES)}
        body = rng.choice(seeds)
        r = rng.random()
        if r < 0.2:
            headers["Content-Encoding"] = "deflate"
            junk = bytes(rng.randrange(256) for _ in range(8))
            body = zlib.compress(body)[: rng.randint(0, 40)] + junk
        elif r < 0.35:
            headers["Origin"] = rng.choice(
                ["http://evil.example", "null", "file://", "http://127.0.0.1:1"]
            )
        content.append((body, headers))
    classes = [
        ("mutation", [(d, js) for d in inputs(rng, n, seeds)]),
        *[(cls, [(d, js) for d in json_cases(rng, n // 5, docs, cls)])
          for cls in ("numbers", "types", "nesting")],
        ("content", content),
    ]  # fmt: skip
    # one connection per request: after a body it cannot decode, aiohttp answers 400 itself
    # and closes the connection, which a pooled client would see as the next request failing
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for cls, cases in classes:
            outcomes: Counter[str] = Counter()
            before = rss_mb()
            escapes = await _post_all(http, url, cases, outcomes)
            rep.add("offer", len(cases), outcomes, escapes, rss_mb() - before, cls)
    await server.stop()
    await fuzz_bursts(rep)


async def fuzz_bursts(rep: Report, rounds: int = 10, limit: int = 4) -> None:
    """Offers and Twilio streams at once, three times the limit: exactly the limit admitted."""
    import aiohttp

    from plugins.net import free_port

    hold = asyncio.Event()
    server = _server_without_models(max_calls=limit, hold=hold)
    port = free_port()
    await server.start("127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    offer = json.dumps({"sdp": BROWSER_OFFER, "type": "offer"})
    start = json.dumps(TWILIO_SEEDS[1])
    out: dict[str, Counter[str]] = {"offer": Counter(), "twilio": Counter()}
    wrong: dict[str, list[str]] = {"offer": [], "twilio": []}
    async with aiohttp.ClientSession() as http:

        async def post() -> str:
            headers = {"Content-Type": "application/json"}
            async with http.post(base + "/offer", data=offer, headers=headers) as resp:
                return str(resp.status)

        async def stream(sockets: list[Any]) -> str:
            try:
                ws = await http.ws_connect(base + "/twilio/media")
            except aiohttp.WSServerHandshakeError as e:
                return str(e.status)
            sockets.append(ws)
            await ws.send_str(start)
            return "101"

        for _ in range(rounds):
            for kind in ("offer", "twilio"):
                hold.clear()
                sockets: list[Any] = []
                jobs = [post() if kind == "offer" else stream(sockets) for _ in range(3 * limit)]
                got = Counter(await asyncio.gather(*jobs))
                out[kind].update(got)
                ok = "200" if kind == "offer" else "101"
                if got != Counter({ok: limit, "503": 2 * limit}):
                    wrong[kind].append(f"{3 * limit} at once, limit {limit}: {dict(got)}")
                hold.set()
                for ws in sockets:
                    await ws.close()
                await _until(lambda: not server.slots.in_use, 10)
    await server.stop()
    for kind in ("offer", "twilio"):
        rep.add(kind, rounds * 3 * limit, out[kind], wrong[kind], 0.0, "burst")


def fuzz_settings(rng: random.Random, n: int, rep: Report) -> None:
    from worker.settings import SettingsError, load_settings

    saved = {k: v for k, v in os.environ.items() if k.startswith(("WORKER_", "LIVEKIT_"))}
    for k in saved:
        del os.environ[k]
    numbers = [with_numbers(rng, TOML_SEED.encode()) for _ in range(n // 5)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "worker.toml"

        def load(data: bytes) -> None:
            path.write_bytes(data)
            load_settings(path, data_dir=Path(tmp))

        refusals = [(SettingsError, "error message")]
        run_cases(rep, "settings", "mutation", inputs(rng, n, [TOML_SEED.encode()]), load, refusals)
        run_cases(rep, "settings", "numbers", numbers, load, refusals)
    os.environ.pop("WORKER_CONFIG", None)
    os.environ.update(saved)


async def main(n: int, seed: int) -> int:
    logging.basicConfig(level=logging.CRITICAL)
    rng = random.Random(seed)
    rep = Report()
    started = time.perf_counter()
    await fuzz_sip(rng, n, rep)
    fuzz_sdp(rng, n, rep)
    fuzz_rtp(rng, n, rep)
    fuzz_twilio(rng, n, rep)
    await fuzz_offer(rng, n, rep)
    fuzz_settings(rng, n, rep)
    for row in rep.rows:
        print(row)
    print(f"{rep.escapes} escapes in {time.perf_counter() - started:.0f} s")
    return 1 if rep.escapes else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="inputs per target")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.n, a.seed)))
