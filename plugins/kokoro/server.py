"""A shared Kokoro speech server with OpenAI's speech API, streaming raw PCM.

    python -m worker tts-server [--host 127.0.0.1] [--port 8092]

``POST /v1/audio/speech`` with ``{"input": "...", "voice": "af_heart", "speed": 1.0,
"response_format": "pcm"}`` streams 24 kHz 16-bit mono PCM (chunked), piece by piece as the
text is synthesised (sentences, long ones split at clauses), so the first audio leaves before
the whole text is done. ``GET /v1/audio/voices`` lists the voices. Requests from all clients
share one synthesis thread and take turns piece by piece; a client that disconnects stops its
synthesis after the current piece. Bad requests get 400 with a reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from ..http import AppServer
from .tts import SAMPLE_RATE, SPEED_RANGE, TTS

logger = logging.getLogger("plugins.kokoro.server")
MAX_INPUT_CHARS = 4096


class KokoroServer(AppServer):
    def __init__(self, tts: TTS) -> None:
        self.tts = tts
        self.active = 0
        self.served = 0
        self.app = web.Application(client_max_size=64 * 1024)
        self.app.add_routes([
            web.post("/v1/audio/speech", self._speech), web.get("/v1/audio/voices", self._voices),
            web.get("/healthz", self._health),
        ])  # fmt: skip

    async def _voices(self, _r: web.Request) -> web.Response:
        return web.json_response({"voices": self.tts.voices})

    async def _health(self, _r: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "active": self.active, "served": self.served})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad("the body must be JSON")
        if not isinstance(body, dict):
            return _bad("the body must be a JSON object")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            return _bad("'input' must be non-empty text")
        if len(text) > MAX_INPUT_CHARS:
            return _bad(f"'input' is longer than {MAX_INPUT_CHARS} characters")
        voice = body.get("voice", self.tts.voice)
        if voice not in self.tts.voices:
            return _bad(f"unknown voice {voice!r}; valid voices: {', '.join(self.tts.voices)}")
        fmt = body.get("response_format", "pcm")
        if fmt != "pcm":
            return _bad("only response_format 'pcm' (24 kHz 16-bit mono) is served")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            return _bad("'speed' must be between 0.5 and 2.0")
        resp = web.StreamResponse(headers={
            "Content-Type": "audio/pcm", "X-Sample-Rate": str(SAMPLE_RATE),
        })  # fmt: skip
        await resp.prepare(request)
        self.active += 1
        try:
            for piece in self.tts.pieces_of(text):
                pcm = await self.tts.synthesize_async(piece, voice=voice, speed=float(speed))
                if pcm.size:
                    await resp.write(pcm.tobytes())
            await resp.write_eof()
            self.served += 1
        except (ConnectionResetError, asyncio.CancelledError):
            logger.info("client left mid-speech; stopped synthesising")
            raise
        finally:
            self.active -= 1
        return resp


def _bad(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)
