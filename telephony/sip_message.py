"""SIP messages (RFC 3261): a strict parser for what arrives from the network and builders for
what we send.

Parsing never raises anything but :class:`SipParseError`, which carries the status to answer
with and whatever headers could be read, so even a broken request gets a proper error response.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from .wire import WireError, integer

MAX_MESSAGE_BYTES = 16 * 1024
"""Larger datagrams are refused with 513; nothing legitimate we handle comes close."""
MAX_HEADERS = 100

COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "r": "refer-to", "b": "referred-by",
    "o": "event", "x": "session-expires", "u": "allow-events", "e": "content-encoding",
}  # fmt: skip
_DISPLAY = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "max-forwards": "Max-Forwards", "content-length": "Content-Length",
    "content-type": "Content-Type", "user-agent": "User-Agent", "retry-after": "Retry-After",
    "record-route": "Record-Route", "refer-to": "Refer-To", "referred-by": "Referred-By",
    "allow-events": "Allow-Events", "subscription-state": "Subscription-State",
}  # fmt: skip
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 405: "Method Not Allowed",
    415: "Unsupported Media Type", 420: "Bad Extension", 481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "Version Not Supported", 513: "Message Too Large",
}  # fmt: skip


class SipParseError(ValueError):
    """A message we cannot accept; ``status`` is the response code that says why."""

    def __init__(
        self, reason: str, status: int = 400, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers or []
        """Headers read before the failure, so the error response can still be routed."""
        self.is_response = False


def display_name(name: str) -> str:
    return _DISPLAY.get(name) or "-".join(p.capitalize() for p in name.split("-"))


@dataclass
class SipMessage:
    """A request (``method`` set) or a response (``status`` set)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split (for Via, Route, ...)."""
        name = name.lower()
        out: list[str] = []
        for k, v in self.headers:
            if k == name:
                out.extend(split_list(v))
        return out

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """Number and method; :func:`parse` has checked the number of anything received."""
        num, _, method = (self.get("cseq") or "0 ").strip().partition(" ")
        return int(num) if num.isascii() and num.isdigit() and len(num) < 11 else 0, method.strip()

    @property
    def branch(self) -> str:
        vias = self.get_all("via")
        return param(vias[0], "branch") or "" if vias else ""

    def to_bytes(self) -> bytes:
        if self.method is not None:
            first = f"{self.method} {self.uri} SIP/2.0"
        else:
            first = f"SIP/2.0 {self.status} {self.reason}"
        lines = [first]
        lines += [f"{display_name(k)}: {v}" for k, v in self.headers if k != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and angle brackets."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def param(value: str, name: str) -> str | None:
    """A ``;name=value`` parameter of a header (outside the <uri>), or "" if it has no value."""
    tail = value.rsplit(">", 1)[1] if ">" in value else value
    for part in tail.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == name:
            return v.strip().strip('"')
    return None


def tag(value: str | None) -> str | None:
    return param(value, "tag") if value else None


def uri_of(value: str) -> str:
    """The URI in a name-addr (``"Bob" <sip:bob@host>;tag=x``) or addr-spec."""
    if "<" in value and ">" in value:
        return value[value.index("<") + 1 : value.index(">")]
    return value.split(";", 1)[0].strip()


def uri_host_port(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """Host and port of a ``sip:`` URI (IPv6 literals in brackets)."""
    rest = uri.split(":", 1)[1] if uri.lower().startswith(("sip:", "sips:")) else uri
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.partition(":")
    if not host:
        raise ValueError(f"no host in {uri!r}")
    number = integer(port, f"port in {uri[:60]!r}", lo=1, hi=65535) if port else default_port
    return host, number


def uri_user(uri: str) -> str | None:
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    return rest.split("@", 1)[0] if "@" in rest else None


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def parse(data: bytes) -> SipMessage:
    """Parse one datagram into a message, or raise :class:`SipParseError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large", 513, _salvage_headers(data))
    sep = data.find(b"\r\n\r\n")
    if sep >= 0:
        head, body = data[:sep], data[sep + 4 :]
    else:
        sep = data.find(b"\n\n")
        head, body = (data[:sep], data[sep + 2 :]) if sep >= 0 else (data, b"")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header is not UTF-8", 400, _salvage_headers(data)) from None
    lines = text.replace("\r\n", "\n").split("\n")
    msg = SipMessage()
    first = lines[0].strip()
    parts = first.split(" ", 2)
    if first.startswith("SIP/"):
        try:
            if len(parts) < 2 or parts[0] != "SIP/2.0":
                raise WireError("not SIP/2.0")
            msg.status = integer(parts[1], "status code", lo=100, hi=699)
        except WireError:
            err = SipParseError(f"bad status line {first[:60]!r}")
            err.is_response = True
            raise err from None
        msg.reason = parts[2] if len(parts) > 2 else ""
    elif len(parts) == 3 and parts[2].startswith("SIP/"):
        method, uri, version = parts
        if version != "SIP/2.0":
            raise SipParseError(f"unsupported version {version[:16]!r}", 505, _header_lines(lines))
        if not _TOKEN.match(method) or ":" not in uri:
            raise SipParseError("bad request line", 400, _header_lines(lines))
        msg.method, msg.uri = method.upper(), uri
    else:
        raise SipParseError("not a SIP request line", 400, _header_lines(lines))

    msg.headers = _header_lines(lines, strict=True)
    try:
        msg.body = _checked(msg, body)
    except WireError as e:
        err = SipParseError(str(e), 400, msg.headers)
        err.is_response = not msg.is_request
        raise err from None
    return msg


def _checked(msg: SipMessage, body: bytes) -> bytes:
    """Check the numeric and required headers; return the body cut to Content-Length."""
    length = msg.get("content-length")
    if length is not None:
        if integer(length, "Content-Length") > len(body):
            raise WireError("body shorter than Content-Length")
        body = body[: int(length)]
    num, _, method = (msg.get("cseq") or "").strip().partition(" ")
    if msg.is_request:
        for name in _REQUIRED:
            if msg.get(name) is None:
                raise WireError(f"missing {display_name(name)} header")
        mf = msg.get("max-forwards")
        if mf is not None:
            integer(mf, "Max-Forwards", hi=2**31 - 1)
    if msg.get("cseq") is not None or msg.is_request:
        integer(num, "CSeq", hi=2**31 - 1)
        if msg.is_request and method.strip().upper() != msg.method:
            raise WireError("CSeq method differs from the request's")
    return body


def _header_lines(lines: list[str], strict: bool = False) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:  # folded continuation
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or not _TOKEN.match(name):
            if strict:
                raise SipParseError(f"malformed header line {line[:40]!r}", 400, headers)
            continue
        headers.append((COMPACT.get(name, name), value.strip()))
        if len(headers) > MAX_HEADERS:
            if strict:
                raise SipParseError("too many headers", 400, headers)
            break
    return headers


def _salvage_headers(data: bytes) -> list[tuple[str, str]]:
    """Best-effort headers of a message we refuse, to address the error response."""
    cut = data[:MAX_MESSAGE_BYTES]
    text = cut.decode("utf-8", "replace").split("\r\n\r\n", 1)[0]
    lines = text.replace("\r\n", "\n").split("\n")
    if len(data) > len(cut) and b"\r\n\r\n" not in cut:
        lines = lines[:-1]  # cut off mid-line: a partial Via would send the answer astray
    return _header_lines(lines)


def response(
    request: SipMessage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> SipMessage:
    """A response to ``request``: Via, From, To, Call-ID and CSeq copied as RFC 3261 says."""
    out = SipMessage(status=status, reason=reason or REASONS.get(status, "Unknown"))
    for k, v in request.headers:
        if k in ("via", "from", "call-id", "cseq") or (k == "record-route" and status < 300):
            out.headers.append((k, v))
        elif k == "to":
            if to_tag and tag(v) is None and status != 100:
                v = f"{v};tag={to_tag}"
            out.headers.append((k, v))
    out.headers += headers or []
    out.body = body
    return out


def error_from_headers(err: SipParseError) -> bytes | None:
    """The error response for an unparseable request, or None when there is nowhere to send
    it (a broken response, or an ACK, gets no answer)."""
    if err.is_response:
        return None
    present = {k for k, _ in err.headers}
    cseq = next((v for k, v in err.headers if k == "cseq"), "")
    if cseq.strip().upper().endswith(" ACK"):
        return None
    out = SipMessage(status=err.status, reason=REASONS.get(err.status, "Bad Request"))
    for k, v in err.headers:
        if k in ("via", "from", "to", "call-id", "cseq"):
            out.headers.append((k, v))
    out.headers.append(("warning", '399 - "' + err.reason.replace('"', "'") + '"'))
    if "via" not in present:
        out.headers.append(("content-type", "text/plain"))
        out.body = (err.reason + "\n").encode()
    return out.to_bytes()
