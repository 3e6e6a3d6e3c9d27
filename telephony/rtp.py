"""RTP (RFC 3550) for one G.711 call leg: packets, a reordering jitter buffer, RFC 4733 DTMF,
and a session that sends 20 ms frames at real-time pace.

Caller audio keeps a real-time clock: when the phone stops sending (silence suppression or
comfort noise), silence frames are fed in its place so end-of-speech is still detected.

The jitter buffer is event-driven: packets are released in sequence order as soon as the next
one is present; a gap is given up on (and filled with silence, so the VAD keeps its clock)
once ``depth`` later packets have arrived. Late and duplicate packets are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from plugins.audio import DTMF_DIGITS, Pacer, g711_decode, g711_encode

from .audio_io import PacedAudioOutput

logger = logging.getLogger("telephony.rtp")

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
MAX_GAP_FILL = 10
"""Lost frames filled with silence at most (200 ms); a longer hole is a pause, not loss."""


class RtpError(ValueError):
    """A datagram that is not an RTP packet we can use."""


@dataclass
class RtpPacket:
    pt: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def to_bytes(self) -> bytes:
        head = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if self.marker else 0) | (self.pt & 0x7F),
            self.seq & 0xFFFF,
            self.timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        return head + self.payload


def parse(data: bytes) -> RtpPacket:
    """Decode an RTP packet (CSRCs, header extension and padding skipped)."""
    if len(data) < 12:
        raise RtpError("shorter than an RTP header")
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    if b0 >> 6 != 2:
        raise RtpError("not RTP version 2")
    pt = b1 & 0x7F
    if 72 <= pt <= 76:
        raise RtpError("RTCP on the RTP port")
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(data) < off + 4:
            raise RtpError("truncated header extension")
        (ext_words,) = struct.unpack_from("!H", data, off + 2)
        off += 4 + 4 * ext_words
    end = len(data)
    if b0 & 0x20:
        if end <= off or data[-1] == 0 or data[-1] > end - off:
            raise RtpError("bad padding")
        end -= data[-1]
    if off > end:
        raise RtpError("truncated packet")
    return RtpPacket(pt, seq, ts, ssrc, bytes(data[off:end]), bool(b1 & 0x80))


class JitterBuffer:
    """Puts packets of one stream back in order; see the module docstring."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = max(1, depth)
        self._next: int | None = None
        self._ssrc: int | None = None
        self._held: dict[int, bytes] = {}
        self.late = 0
        self.lost = 0
        self.reordered = 0

    def push(self, pkt: RtpPacket) -> list[bytes | None]:
        """Add a packet; returns payloads now ready in order (None marks a lost frame)."""
        if self._next is None or pkt.ssrc != self._ssrc:
            out = self._drain()
            self._ssrc, self._next = pkt.ssrc, pkt.seq
            self._held = {}
            return out + self._accept(pkt)
        return self._accept(pkt)

    def _accept(self, pkt: RtpPacket) -> list[bytes | None]:
        assert self._next is not None
        ahead = (pkt.seq - self._next) & 0xFFFF
        if ahead >= 0x8000:  # behind what we already released
            self.late += 1
            return []
        if ahead > 3000:  # a jump (the sender restarted): start over from here
            out = self._drain()
            self._next = pkt.seq
            self._held = {}
            ahead = 0
        else:
            out = []
        if pkt.seq in self._held:
            return out  # duplicate
        if ahead > 0 and self._held and ahead < max(self._held_offsets()):
            self.reordered += 1
        self._held[pkt.seq] = pkt.payload
        return out + self._release()

    def _held_offsets(self) -> set[int]:
        assert self._next is not None
        return {(s - self._next) & 0xFFFF for s in self._held}

    def _release(self) -> list[bytes | None]:
        assert self._next is not None
        out: list[bytes | None] = []
        while True:
            while self._next in self._held:
                out.append(self._held.pop(self._next))
                self._next = (self._next + 1) & 0xFFFF
            if len(self._held) < self.depth:
                return out
            # give up on the gap: skip to the oldest packet we hold
            gap = min(self._held_offsets())
            self.lost += gap
            out.extend([None] * min(gap, MAX_GAP_FILL))
            self._next = (self._next + gap) & 0xFFFF

    def _drain(self) -> list[bytes | None]:
        """Everything held, in order, gaps filled (used when the stream restarts)."""
        if self._next is None or not self._held:
            return []
        out = [self._held[(self._next + off) & 0xFFFF] for off in sorted(self._held_offsets())]
        self._held = {}
        return list(out)


def dtmf_event(payload: bytes) -> tuple[str, bool, int] | None:
    """(digit, end-of-event, duration) from an RFC 4733 payload, None for unknown events."""
    if len(payload) < 4:
        return None
    event, flags, duration = struct.unpack_from("!BBH", payload)
    if event >= len(DTMF_DIGITS):
        return None
    return DTMF_DIGITS[event], bool(flags & 0x80), duration


class DtmfReceiver:
    """Reports each RFC 4733 event once, on its first packet (end packets are sent 3 times)."""

    def __init__(self) -> None:
        self._seen: list[tuple[int, int]] = []

    def push(self, pkt: RtpPacket) -> str | None:
        ev = dtmf_event(pkt.payload)
        if ev is None:
            return None
        key = (pkt.ssrc, pkt.timestamp)
        if key in self._seen:
            return None
        self._seen.append(key)
        del self._seen[:-16]
        return ev[0]


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP: caller audio in through the jitter buffer, agent audio out every 20 ms."""

    def __init__(
        self,
        *,
        output: PacedAudioOutput,
        on_audio: Callable[[np.ndarray], None],
        on_dtmf: Callable[[str], None],
        jitter_depth: int = 3,
        symmetric: bool = False,
    ) -> None:
        self._output = output
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._jitter = JitterBuffer(jitter_depth)
        self._dtmf = DtmfReceiver()
        self._symmetric = symmetric
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.codecs: dict[int, str] = {0: "ulaw", 8: "alaw"}
        self.send_pt = 0
        self.dtmf_pt: int | None = None
        self.sending = True
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._sender: asyncio.Task[None] | None = None
        self._dtmf_out: asyncio.Queue[str] = asyncio.Queue()
        self.last_received = time.monotonic()
        self._last_audio = self.last_received
        self._fill_after = 0.02 * (jitter_depth + 2)
        self.received = 0
        self.filled = 0
        self.sent = 0
        self.bad = 0

    # -- receiving -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            pkt = parse(data)
        except RtpError:
            self.bad += 1
            return
        if self._symmetric and self.remote != addr[:2]:
            self.remote = (addr[0], addr[1])
        self.last_received = time.monotonic()
        self.received += 1
        if self.dtmf_pt is not None and pkt.pt == self.dtmf_pt:
            digit = self._dtmf.push(pkt)
            if digit is not None:
                self._on_dtmf(digit)
            return
        law = self.codecs.get(pkt.pt)
        if law is None:
            self.bad += 1  # comfort noise or a format we did not agree
            return
        self._last_audio = self.last_received
        for payload in self._jitter.push(pkt):
            if payload is None:
                self._on_audio(np.zeros(FRAME, dtype=np.int16))
            elif payload:
                self._on_audio(g711_decode(payload, law))

    def error_received(self, exc: Exception) -> None:
        logger.debug("rtp socket error: %s", exc)

    @property
    def jitter(self) -> JitterBuffer:
        return self._jitter

    # -- sending ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        if self.transport is not None:
            self.transport.close()

    def queue_dtmf(self, digits: str) -> None:
        for d in digits:
            self._dtmf_out.put_nowait(d)

    def _send(self, pt: int, payload: bytes, *, marker: bool = False) -> None:
        if self.transport is None or self.remote is None or not self.sending:
            return
        pkt = RtpPacket(pt, self._seq, self._ts, self.ssrc, payload, marker)
        try:
            self.transport.sendto(pkt.to_bytes(), self.remote)
        except (OSError, ValueError, OverflowError, TypeError) as e:  # never close the socket
            logger.debug("rtp send to %s failed: %s", self.remote, e)
        self._seq = (self._seq + 1) & 0xFFFF
        self.sent += 1

    async def _send_loop(self) -> None:
        """One packet per 20 ms on an absolute clock, so pacing does not drift."""
        pace = Pacer()
        talking = False
        dtmf: tuple[int, int] | None = None  # (event, frames sent)
        while True:
            if time.monotonic() - self._last_audio > self._fill_after:
                # the caller's phone stopped sending (silence suppression, comfort noise, a
                # lost stream): keep the caller's clock running so the VAD sees the silence
                self.filled += 1
                self._on_audio(np.zeros(FRAME, dtype=np.int16))
            if dtmf is None and not self._dtmf_out.empty() and self.dtmf_pt is not None:
                dtmf = (DTMF_DIGITS.index(self._dtmf_out.get_nowait()), 0)
            if dtmf is not None and self.dtmf_pt is not None:
                event, n = dtmf
                n += 1
                end = n >= 5  # 100 ms tones
                payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, n * FRAME)
                for _ in range(3 if end else 1):
                    self._send(self.dtmf_pt, payload, marker=n == 1)
                dtmf = None if end else (event, n)
                if dtmf is None:  # agent audio waits while a tone plays
                    self._ts = (self._ts + n * FRAME) & 0xFFFFFFFF
            else:
                pcm = self._output.read(FRAME)
                speaking = bool(pcm.any())
                law = self.codecs.get(self.send_pt, "ulaw")
                self._send(self.send_pt, g711_encode(pcm, law), marker=speaking and not talking)
                talking = speaking
                self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            await pace.wait()
