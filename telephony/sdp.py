"""SDP (RFC 4566) for one audio stream: read a caller's offer or answer, pick a codec, and
write ours. We speak G.711 (PCMU, PCMA) and RFC 4733 telephone-events, nothing else."""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .wire import WireError, integer

STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
CODEC_LAW = {"PCMU": "ulaw", "PCMA": "alaw"}
DEFAULT_DTMF_PT = 101


class SdpError(ValueError):
    """An SDP body we cannot read."""


class NoCommonCodec(SdpError):
    """The offer has no audio format we speak (answered with 488)."""


@dataclass
class AudioDescription:
    """The audio m-line of a session description, with the connection address that applies."""

    address: str
    port: int
    payloads: list[int]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    direction: str = "sendrecv"
    ptime: int | None = None

    def codec(self, pt: int) -> tuple[str, int] | None:
        return self.rtpmap.get(pt) or STATIC.get(pt)


@dataclass
class Negotiated:
    """What both sides agreed: the payload type we send, those we accept, DTMF, direction."""

    send_pt: int
    codecs: dict[int, str]
    """Payload type -> ``ulaw``/``alaw`` for every G.711 format in the answer."""
    dtmf_pt: int | None
    remote: tuple[str, int]
    direction: str

    @property
    def law(self) -> str:
        return self.codecs[self.send_pt]


def parse(body: bytes | str) -> AudioDescription:
    """The first audio stream of an SDP body."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    session_addr: str | None = None
    media: AudioDescription | None = None
    seen_audio = False
    direction = "sendrecv"
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            if line:
                raise SdpError(f"bad SDP line {line[:40]!r}")
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if media is not None:
                break  # only the first audio stream is ours
            parts = value.split()
            if len(parts) < 4:
                raise SdpError("bad m= line")
            if parts[0] != "audio":
                continue
            seen_audio = True
            port = _int(parts[1].split("/")[0], "m= port", 65535)
            if parts[2] not in ("RTP/AVP", "RTP/AVPF"):
                raise NoCommonCodec(f"transport {parts[2]} is not plain RTP")
            pts = [_int(p, "payload type", 127) for p in parts[3:]]
            media = AudioDescription(session_addr or "", port, pts)
        elif kind == "c":
            parts = value.split()
            if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError("bad c= line")
            addr = parts[2].split("/")[0]
            if media is None:
                session_addr = addr
            else:
                media.address = addr
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                if media is None:
                    direction = name
                else:
                    media.direction = name
            elif media is not None and name == "rtpmap":
                pt, _, enc = arg.partition(" ")
                enc_name, _, rest = enc.partition("/")
                rate = rest.split("/")[0]
                with contextlib.suppress(WireError):  # an odd attribute is ignored
                    media.rtpmap[integer(pt, "pt", hi=127)] = (
                        enc_name.strip(), integer(rate, "rate", hi=1_000_000)
                    )  # fmt: skip
            elif media is not None and name == "ptime":
                with contextlib.suppress(WireError):
                    media.ptime = integer(arg, "ptime", lo=1, hi=1000)
    if media is None:
        raise NoCommonCodec("no audio stream" if not seen_audio else "no usable audio stream")
    if not media.address:
        raise SdpError("no connection address (c=)")
    try:
        ipaddress.ip_address(media.address)  # a host name would mean a blocking DNS lookup
    except ValueError:
        raise SdpError(f"connection address {media.address[:40]!r} is not an IP address") from None
    if media.direction == "sendrecv" and direction != "sendrecv":
        media.direction = direction
    return media


def _int(text: str, what: str, hi: int) -> int:
    try:
        return integer(text, what, hi=hi)
    except WireError as e:
        raise SdpError(f"bad {what} in m= line") from e


def negotiate(offer: AudioDescription, codecs: Sequence[str]) -> Negotiated:
    """Answer an offer: the G.711 formats we allow, in the caller's order of preference."""
    ours: dict[int, str] = {}
    dtmf: int | None = None
    for pt in offer.payloads:
        codec = offer.codec(pt)
        if codec is None:
            continue
        name, rate = codec[0].upper(), codec[1]
        if name in codecs and rate == 8000 and name in CODEC_LAW:
            ours[pt] = CODEC_LAW[name]
        elif name == "TELEPHONE-EVENT" and rate == 8000 and dtmf is None:
            dtmf = pt
    if not ours:
        raise NoCommonCodec("no common codec: we speak " + ", ".join(codecs) + " at 8 kHz")
    answer_dir = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(
        offer.direction, offer.direction
    )
    return Negotiated(
        send_pt=next(iter(ours)),
        codecs=ours,
        dtmf_pt=dtmf,
        remote=(offer.address, offer.port),
        direction=answer_dir,
    )


def accept_answer(answer: AudioDescription, codecs: Sequence[str]) -> Negotiated:
    """Read the caller's answer to our offer (a delayed-offer INVITE answered in the ACK)."""
    return negotiate(answer, codecs)


class SessionWriter:
    """Writes our session description, bumping the version only when it changes."""

    def __init__(self, address: str, port: int, user_agent: str = "voice-worker") -> None:
        self.address = address
        self.port = port
        self.user_agent = user_agent
        self.session_id = int(time.time() * 1000) % (2**31)
        self.version = self.session_id
        self._last: str | None = None

    def _write(self, media: list[str]) -> str:
        ip = "IP6" if ":" in self.address else "IP4"
        key = "\n".join(media)
        if self._last is not None and self._last != key:
            self.version += 1
        self._last = key
        lines = [
            "v=0",
            f"o=- {self.session_id} {self.version} IN {ip} {self.address}",
            f"s={self.user_agent}",
            f"c=IN {ip} {self.address}",
            "t=0 0",
            *media,
        ]
        return "\r\n".join(lines) + "\r\n"

    def offer(self, codecs: Sequence[str]) -> str:
        """Our offer: every codec we allow plus telephone-event."""
        pts = {"PCMU": 0, "PCMA": 8}
        order = [pts[c] for c in codecs if c in pts]
        media = [f"m=audio {self.port} RTP/AVP {' '.join(map(str, order))} {DEFAULT_DTMF_PT}"]
        media += [f"a=rtpmap:{pt} {STATIC[pt][0]}/8000" for pt in order]
        media += [f"a=rtpmap:{DEFAULT_DTMF_PT} telephone-event/8000",
                  f"a=fmtp:{DEFAULT_DTMF_PT} 0-16", "a=ptime:20", "a=sendrecv"]  # fmt: skip
        return self._write(media)

    def answer(self, neg: Negotiated) -> str:
        pts = list(neg.codecs) + ([neg.dtmf_pt] if neg.dtmf_pt is not None else [])
        media = [f"m=audio {self.port} RTP/AVP {' '.join(map(str, pts))}"]
        for pt, law in neg.codecs.items():
            media.append(f"a=rtpmap:{pt} {'PCMU' if law == 'ulaw' else 'PCMA'}/8000")
        if neg.dtmf_pt is not None:
            media += [f"a=rtpmap:{neg.dtmf_pt} telephone-event/8000",
                      f"a=fmtp:{neg.dtmf_pt} 0-16"]  # fmt: skip
        media += ["a=ptime:20", f"a={neg.direction}"]
        return self._write(media)
