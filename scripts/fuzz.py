"""Fuzz every parser that faces the network (and the settings file) with mutated and random
inputs, and check that each input gets its protocol's error, no exception escapes, and memory
stays bounded. Deterministic (seeded); CI runs it from scripts/test.sh.

    python scripts/fuzz.py [--n 10000] [--seed 1]

Targets: the SIP server over real UDP (datagrams mutated from valid requests, plus random
bytes), SDP, RTP with the jitter buffer and DTMF, Twilio Media Streams messages, the WebRTC
offer endpoint over real HTTP, and the TOML settings file. Prints one line per target with
its input count, the outcomes and the memory growth; exits 1 if anything escaped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
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


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


class Report:
    def __init__(self) -> None:
        self.rows: list[str] = []
        self.escapes = 0

    def add(
        self, name: str, n: int, outcomes: Counter[str], escapes: list[str], mem: float
    ) -> None:
        self.escapes += len(escapes)
        top = ", ".join(f"{k} {v}" for k, v in outcomes.most_common(6))
        self.rows.append(
            f"{name:8} {n:6d} inputs  {len(escapes)} escapes  memory {mem:+.1f} MB  ({top})"
        )
        for e in escapes[:5]:
            self.rows.append(f"           escape: {e}")


# -- targets --------------------------------------------------------------------------------


async def fuzz_sip(rng: random.Random, n: int, rep: Report) -> None:
    from telephony.sip import SipCall, SipConfig, SipServer

    async def hold(call: SipCall) -> None:
        await asyncio.wait_for(call.ended.wait(), 2)

    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    handler = Catch()
    logging.getLogger("telephony").addHandler(handler)
    server = SipServer(SipConfig(port=0, max_calls=4, rtp_timeout=1.0), on_call=hold)
    await server.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    seeds = []
    for i, tpl in enumerate(SIP_SEEDS):
        sdp = SDP_SEED
        seeds.append(tpl.format(port=port, n=i, len=len(sdp), sdp=sdp).encode())
    outcomes: Counter[str] = Counter()
    before = rss_mb()
    for data in inputs(rng, n, seeds):
        sock.sendto(data, server.address)
        await asyncio.sleep(0.001)  # asyncio reads one datagram per loop turn
        while True:
            try:
                reply = sock.recv(65535)
            except BlockingIOError:
                break
            outcomes[reply.split(b" ", 2)[1].decode(errors="replace")[:3]] += 1
    await asyncio.sleep(0.5)
    while True:
        try:
            reply = sock.recv(65535)
            outcomes[reply.split(b" ", 2)[1].decode(errors="replace")[:3]] += 1
        except BlockingIOError:
            break
    # the server must still answer, and its state must be bounded
    probe = SIP_SEEDS[1].format(port=port, n=999999, len=0, sdp="").encode()
    sock.sendto(probe, server.address)
    answered = False
    deadline = time.monotonic() + 3
    while not answered and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        while True:
            try:
                answered |= b"opt-999999" in sock.recv(65535)
            except BlockingIOError:
                break
    if not answered:
        errors.append("the server stopped answering OPTIONS after the fuzz run")
    if len(server._responses) > 4096 or len(server.calls) > 4:
        errors.append(f"state grew: {len(server._responses)} responses, {len(server.calls)} calls")
    mem = rss_mb() - before
    await server.stop()
    sock.close()
    logging.getLogger("telephony").removeHandler(handler)
    rep.add("sip", n, outcomes, errors, mem)


def fuzz_sdp(rng: random.Random, n: int, rep: Report) -> None:
    from telephony import sdp

    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    before = rss_mb()
    for data in inputs(rng, n, [SDP_SEED.encode()]):
        try:
            neg = sdp.negotiate(sdp.parse(data), ["PCMU", "PCMA"])
            sdp.SessionWriter("127.0.0.1", 10000).answer(neg)
            outcomes["ok"] += 1
        except sdp.NoCommonCodec:
            outcomes["488"] += 1
        except sdp.SdpError:
            outcomes["400"] += 1
        except Exception as e:  # an escape: reported, not raised
            escapes.append(f"{type(e).__name__}: {e} for {data[:80]!r}")
    rep.add("sdp", n, outcomes, escapes, rss_mb() - before)


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
    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    before = rss_mb()
    for data in inputs(rng, n, seeds):
        text = data.decode("utf-8", "replace")
        try:
            twilio.parse_message(text)
            outcomes["ok"] += 1
        except twilio.TwilioProtocolError:
            outcomes["close 1003"] += 1
        except Exception as e:  # an escape
            escapes.append(f"{type(e).__name__}: {e} for {text[:80]!r}")
    rep.add("twilio", n, outcomes, escapes, rss_mb() - before)


async def fuzz_offer(rng: random.Random, n: int, rep: Report) -> None:
    import aiohttp

    from worker.local.server import LocalServer
    from worker.models import Models
    from worker.settings import Settings

    class NoModels(LocalServer):
        async def _run(self, call: Any, profile: Any = "web") -> None:
            # a fuzz run loads no models: an accepted offer just ends its call again
            self._calls.pop(call.call_id, None)
            await call.close()

    server = NoModels(Models(settings=Settings()), max_calls=10_000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await server.start("127.0.0.1", port)
    browser_like = (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 "
        + ":".join(["AB"] * 32)
        + "\r\na=setup:actpass\r\na=rtcp-mux\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    seeds = [json.dumps({"sdp": browser_like, "type": "offer"}).encode(),
             json.dumps({"sdp": "v=0", "type": "answer"}).encode()]  # fmt: skip
    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    before = rss_mb()
    async with aiohttp.ClientSession() as http:
        for data in inputs(rng, n, seeds):
            async with http.post(f"http://127.0.0.1:{port}/offer", data=data) as resp:
                outcomes[str(resp.status)] += 1
                if resp.status >= 500 and resp.status != 503:
                    escapes.append(f"HTTP {resp.status} for {data[:80]!r}")
    await server.stop()
    rep.add("offer", n, outcomes, escapes, rss_mb() - before)


def fuzz_settings(rng: random.Random, n: int, rep: Report) -> None:
    from worker.settings import SettingsError, load_settings

    outcomes: Counter[str] = Counter()
    escapes: list[str] = []
    saved = {k: v for k, v in os.environ.items() if k.startswith(("WORKER_", "LIVEKIT_"))}
    for k in saved:
        del os.environ[k]
    before = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "worker.toml"
        for data in inputs(rng, n, [TOML_SEED.encode()]):
            path.write_bytes(data)
            try:
                load_settings(path, data_dir=Path(tmp))
                outcomes["ok"] += 1
            except SettingsError:
                outcomes["error message"] += 1
            except Exception as e:  # an escape
                escapes.append(f"{type(e).__name__}: {e} for {data[:80]!r}")
    os.environ.pop("WORKER_CONFIG", None)
    os.environ.update(saved)
    rep.add("settings", n, outcomes, escapes, rss_mb() - before)


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
