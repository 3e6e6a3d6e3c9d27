"""Twilio Media Streams: a phone call arriving as a bidirectional WebSocket.

Twilio sends ``connected``, ``start``, ``media`` (base64 mu-law, 8 kHz), ``dtmf``, ``mark`` and
``stop`` messages; we send ``media`` back in real-time 20 ms frames, a ``mark`` after each
reply, and ``clear`` when the caller cuts a reply so Twilio drops what it still holds.
Point a number at it with ``<Connect><Stream url="wss://HOST/twilio/media"/></Connect>``.
A malformed message closes that stream with a reason; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from typing import Any

from livekit import rtc

from plugins.audio import DTMF_DIGITS, Pacer, g711_decode, g711_encode

from . import wire
from .call import Call

logger = logging.getLogger("telephony.twilio")

RATE = 8000
FRAME = RATE // 50  # 20 ms
MAX_MESSAGE_BYTES = 64 * 1024


class TwilioProtocolError(ValueError):
    """A message that breaks the Media Streams protocol; the text is the close reason."""


def expected_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of the URL and the sorted POST params."""
    payload = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_valid(auth_token: str, url: str, signature: str | None) -> bool:
    """Whether ``signature`` (any text, from the network) is Twilio's for ``url``."""
    if not signature:
        return False
    expected = expected_signature(auth_token, url).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def parse_message(raw: str) -> dict[str, Any]:
    """Decode one Media Streams message, checking the type and range of every field we use.

    Anything else raises :class:`TwilioProtocolError`, whose text is the close reason.
    """
    try:
        msg = wire.load_json(raw, "message")
        if not isinstance(msg, dict):
            raise wire.WireError("message is not a JSON object")
        event = wire.field(msg, "event", str, "message")
        if event == "start":
            start = wire.field(msg, "start", dict, "message")
            sid = start.get("streamSid") or msg.get("streamSid")
            if not isinstance(sid, str) or not sid:
                raise wire.WireError("'start' without a streamSid")
            fmt = wire.field(start, "mediaFormat", dict, "start", required=False) or {}
            if fmt:
                rate = wire.number(fmt.get("sampleRate", RATE), "sampleRate", lo=1, hi=192_000)
                channels = wire.number(fmt.get("channels", 1), "channels", lo=1, hi=8)
                if fmt.get("encoding") != "audio/x-mulaw" or rate != RATE or channels != 1:
                    raise wire.WireError(
                        f"unsupported media format {fmt.get('encoding')!r} at {rate:g} Hz"[:100]
                    )
            params = wire.field(start, "customParameters", dict, "start", required=False) or {}
            caller = params.get("from")
            msg["_caller"] = caller if isinstance(caller, str) else None
            msg["_stream_sid"] = sid
        elif event == "media":
            media = wire.field(msg, "media", dict, "message")
            payload = wire.field(media, "payload", str, "media")
            try:
                msg["_audio"] = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as e:
                raise wire.WireError("'media' payload is not base64") from e
        elif event == "dtmf":
            dtmf = wire.field(msg, "dtmf", dict, "message")
            digit = dtmf.get("digit")
            if not isinstance(digit, str) or digit not in DTMF_DIGITS:
                raise wire.WireError(f"'dtmf' with an invalid digit {str(digit)[:8]!r}")
        elif event not in ("connected", "mark", "stop"):
            raise wire.WireError(f"unknown event {event[:32]!r}")
    except wire.WireError as e:
        raise TwilioProtocolError(str(e)) from None
    return msg


class TwilioCall(Call):
    """One Media Streams connection; ``send`` writes a JSON text message to the socket."""

    transport = "twilio"

    def __init__(self, call_id: str, stream_sid: str, send: Any, caller: str | None = None) -> None:
        super().__init__(call_id, output_rate=RATE, caller=caller)
        self.stream_sid = stream_sid
        self._send = send
        self._marks = 0
        self._sender: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self.audio_output.listeners.append(self._on_playout)

    def start_sending(self) -> None:
        self._sender = asyncio.create_task(self._send_loop())

    def receive_media(self, mulaw: bytes) -> None:
        pcm = g711_decode(mulaw, "ulaw")
        if pcm.size:
            self.audio_input.push(rtc.AudioFrame(pcm.tobytes(), RATE, 1, pcm.size))

    async def _send_loop(self) -> None:
        """Agent audio out in real time: only while there is something to say."""
        pace = Pacer()
        while not self.ended.is_set():
            if self.audio_output.speaking:
                pcm = self.audio_output.read(FRAME)
                payload = base64.b64encode(g711_encode(pcm, "ulaw")).decode()
                await self._send(
                    {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
                )
            await pace.wait()

    def _on_playout(self, what: str, _at: float) -> None:
        if what == "clear":
            self._post({"event": "clear", "streamSid": self.stream_sid})
        elif what == "done":
            self._marks += 1
            mark = {"name": f"reply-{self._marks}"}
            self._post({"event": "mark", "streamSid": self.stream_sid, "mark": mark})

    def _post(self, message: dict[str, Any]) -> None:
        if self.ended.is_set():
            return  # the socket is closing: Twilio would never see it
        task = asyncio.ensure_future(self._send(message))
        self._pending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("twilio %s: a message was not sent: %s", self.call_id, task.exception())

    async def close(self) -> None:
        self.mark_ended(self.end_reason)
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
