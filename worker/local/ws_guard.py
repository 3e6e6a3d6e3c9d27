"""RFC 6455 says a server must close a connection whose client sends an unmasked frame, with
status 1002. aiohttp reads such frames as if they were masked and has no option to refuse
them, so this module watches the frame headers before aiohttp's reader sees the bytes.

The one piece of aiohttp's private API the worker uses lives here: the request handler's
``_payload_parser`` (and the ``_message_tail`` it holds before the upgrade), wrapped after
:meth:`aiohttp.web.WebSocketResponse.prepare`. ``tests/test_local_server.py`` pins it: if an
aiohttp upgrade renames them, :func:`prepare_masked` raises instead of silently not checking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


class FrameHeaders:
    """Follows WebSocket frame boundaries in a byte stream and notes the first unmasked one."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._skip = 0
        self.unmasked = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self.unmasked:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            self._header.append(data[i])
            i += 1
            self._header_done()

    def _header_done(self) -> None:
        h = self._header
        if len(h) < 2:
            return
        masked, short = h[1] >> 7, h[1] & 0x7F
        extra = 2 if short == 126 else 8 if short == 127 else 0
        if len(h) < 2 + extra + 4 * masked:
            return
        if not masked:
            self.unmasked = True
            return
        self._skip = int.from_bytes(h[2 : 2 + extra], "big") if extra else short
        self._header.clear()


class _GuardedParser:
    """Passes bytes to aiohttp's WebSocket reader unless a frame was unmasked."""

    def __init__(self, inner: Any, frames: FrameHeaders, on_unmasked: Callable[[], None]) -> None:
        self._inner = inner
        self._frames = frames
        self._on_unmasked = on_unmasked

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self._frames.unmasked:
            self._frames.feed(data)
            if self._frames.unmasked:
                self._on_unmasked()
        if self._frames.unmasked:
            return False, b""  # nothing after a protocol error is read
        result: tuple[bool, bytes] = self._inner.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def prepare_masked(
    ws: web.WebSocketResponse, request: web.Request, on_unmasked: Callable[[], None]
) -> FrameHeaders:
    """``ws.prepare(request)``, then watch every client frame; ``on_unmasked`` runs (once) at
    the first unmasked one, whose bytes and all that follow are dropped."""
    protocol = request.protocol
    if protocol is None or not hasattr(protocol, "_payload_parser"):
        raise RuntimeError("aiohttp's request handler changed: cannot check WebSocket masking")
    frames = FrameHeaders()
    frames.feed(bytes(getattr(protocol, "_message_tail", b"")))  # sent along with the upgrade
    await ws.prepare(request)
    inner = protocol._payload_parser
    if inner is None:
        raise RuntimeError("aiohttp's WebSocket upgrade changed: no payload parser to watch")
    protocol._payload_parser = _GuardedParser(inner, frames, on_unmasked)
    if frames.unmasked:
        on_unmasked()
    return frames
