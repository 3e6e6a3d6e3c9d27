"""A shared streaming STT server: one GPU (or CPU) serves many workers' callers.

    python -m worker stt-server [--host 127.0.0.1] [--port 8091] [--model PATH]

``POST /v1/transcribe`` takes up to 30 s of 16 kHz 16-bit PCM and returns ``{"text"}``.
``GET /v1/listen?sample_rate=16000&language=en`` upgrades to a WebSocket. The client sends
binary messages of 16-bit little-endian mono PCM at ``sample_rate`` and may send the text
message ``{"type": "end"}`` when its audio is over; the server sends JSON events:
``start_of_speech``, ``interim`` and ``final`` (with ``text``), ``end_of_speech``, each with
the utterance ``id``. Every connection gets the in-process streaming recogniser (VAD,
interim re-decodes, finals); the decodes of all connections go through one batch decoder.
A malformed message closes that connection with code 1003 and a reason; others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web
from livekit import rtc
from livekit.agents import stt as agents_stt

from ..http import AppServer
from .batch import BatchDecoder
from .stt import STT

logger = logging.getLogger("plugins.faster_whisper.server")

MAX_MESSAGE_BYTES = 64 * 1024
_KINDS = {
    agents_stt.SpeechEventType.START_OF_SPEECH: "start_of_speech",
    agents_stt.SpeechEventType.INTERIM_TRANSCRIPT: "interim",
    agents_stt.SpeechEventType.PREFLIGHT_TRANSCRIPT: "preflight",
    agents_stt.SpeechEventType.FINAL_TRANSCRIPT: "final",
    agents_stt.SpeechEventType.END_OF_SPEECH: "end_of_speech",
}


class STTServer(AppServer):
    def __init__(self, stt: STT, *, max_streams: int = 64) -> None:
        self.stt = stt
        self.batcher = BatchDecoder(stt.whisper, stt.language)
        stt.batcher = self.batcher
        self.max_streams = max_streams
        self.streams = 0
        self.app = web.Application(client_max_size=30 * 16000 * 2 + 1024)
        self.app.add_routes(
            [
                web.get("/v1/listen", self._listen),
                web.post("/v1/transcribe", self._transcribe),
                web.get("/healthz", self._health),
            ]
        )

    async def _health(self, _r: web.Request) -> web.Response:
        s = self.batcher.stats
        return web.json_response({"status": "ok", "streams": self.streams, "batches": s.batches,
                                  "items": s.items, "largest_batch": s.largest})  # fmt: skip

    async def _transcribe(self, request: web.Request) -> web.Response:
        """One-shot: the body is 16 kHz 16-bit mono PCM (at most 30 s); returns the text."""
        data = await request.read()
        if len(data) % 2 or len(data) > 30 * 16000 * 2:
            return web.json_response(
                {"error": "send up to 30 s of 16 kHz 16-bit mono PCM"}, status=400
            )
        pcm = np.frombuffer(data, dtype=np.int16).astype(np.float32) / 32768.0
        return web.json_response({"text": await self.batcher.transcribe(pcm)})

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        try:
            rate = int(request.query.get("sample_rate", "16000"))
        except ValueError:
            rate = 0
        if not 8000 <= rate <= 48000:
            return web.json_response({"error": "sample_rate must be 8000-48000"}, status=400)
        if self.streams >= self.max_streams:
            return web.json_response({"error": "busy"}, status=503)
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30)
        await ws.prepare(request)
        self.streams += 1
        stream = self.stt.stream(language=request.query.get("language") or self.stt.language)

        async def forward() -> None:
            async for ev in stream:
                kind = _KINDS.get(ev.type)
                if kind is None:
                    continue
                msg: dict[str, Any] = {"type": kind, "id": ev.request_id}
                if ev.alternatives:
                    msg["text"] = ev.alternatives[0].text
                await ws.send_json(msg)

        sender = asyncio.create_task(forward())
        reason = ""
        try:
            async for m in ws:
                if m.type == WSMsgType.BINARY:
                    if len(m.data) % 2:
                        reason = "audio must be 16-bit samples (an even number of bytes)"
                        break
                    pcm = np.frombuffer(m.data, dtype=np.int16)
                    if pcm.size:
                        stream.push_frame(rtc.AudioFrame(m.data, rate, 1, pcm.size))
                elif m.type == WSMsgType.TEXT:
                    try:
                        ctrl = json.loads(m.data)
                    except json.JSONDecodeError:
                        reason = "text messages must be JSON"
                        break
                    if not isinstance(ctrl, dict) or ctrl.get("type") != "end":
                        reason = 'the only control message is {"type": "end"}'
                        break
                    stream.end_input()
                    await sender  # the last finals go out before the close
                    break
                else:
                    break
        finally:
            self.streams -= 1
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            await stream.aclose()
            if reason:
                logger.info("closing an STT stream: %s", reason)
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=reason.encode())
            elif not ws.closed:
                await ws.close()
        return ws

    async def stop(self) -> None:
        await super().stop()
        await self.batcher.aclose()
