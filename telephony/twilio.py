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
import json
import logging
import time
from typing import Any

from livekit import rtc

from . import g711
from .call import Call

logger = logging.getLogger("telephony.twilio")

RATE = 8000
FRAME = RATE // 50  # 20 ms
MAX_MESSAGE_BYTES = 64 * 1024
DTMF_DIGITS = set("0123456789*#ABCD")


class TwilioProtocolError(ValueError):
    """A message that breaks the Media Streams protocol; the text is the close reason."""


def expected_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of the URL and the sorted POST params."""
    payload = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_valid(auth_token: str, url: str, signature: str | None) -> bool:
    if not signature:
        return False
    return hmac.compare_digest(expected_signature(auth_token, url), signature)


def parse_message(raw: str) -> dict[str, Any]:
    """Decode one Media Streams message, checking the fields we use."""
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TwilioProtocolError(f"message is not JSON: {e.msg}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise TwilioProtocolError("message has no 'event'")
    event = msg["event"]
    if event == "start":
        start = msg.get("start")
        if not isinstance(start, dict) or not isinstance(
            start.get("streamSid") or msg.get("streamSid"), str
        ):
            raise TwilioProtocolError("'start' without a streamSid")
        fmt = start.get("mediaFormat") or {}
        if fmt and (
            fmt.get("encoding") != "audio/x-mulaw" or int(fmt.get("sampleRate", RATE)) != RATE
        ):
            raise TwilioProtocolError(f"unsupported media format {fmt}")
    elif event == "media":
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise TwilioProtocolError("'media' without a payload")
        try:
            msg["_audio"] = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise TwilioProtocolError("'media' payload is not base64") from e
    elif event == "dtmf":
        dtmf = msg.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            raise TwilioProtocolError(f"'dtmf' with an invalid digit {digit!r}")
    elif event not in ("connected", "mark", "stop"):
        raise TwilioProtocolError(f"unknown event {event!r}")
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
        pcm = g711.decode(mulaw, "ulaw")
        if pcm.size:
            self.audio_input.push(rtc.AudioFrame(pcm.tobytes(), RATE, 1, pcm.size))

    async def _send_loop(self) -> None:
        """Agent audio out in real time: only while there is something to say."""
        start = time.monotonic()
        i = 0
        while not self.ended.is_set():
            if self.audio_output.speaking:
                pcm = self.audio_output.read(FRAME)
                payload = base64.b64encode(g711.encode(pcm, "ulaw")).decode()
                await self._send(
                    {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
                )
            i += 1
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))

    def _on_playout(self, what: str, _at: float) -> None:
        if what == "clear":
            self._post({"event": "clear", "streamSid": self.stream_sid})
        elif what == "done":
            self._marks += 1
            mark = {"name": f"reply-{self._marks}"}
            self._post({"event": "mark", "streamSid": self.stream_sid, "mark": mark})

    def _post(self, message: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._send(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        self.mark_ended(self.end_reason)
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
