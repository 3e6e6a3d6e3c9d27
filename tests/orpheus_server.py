"""A local HTTP server that streams Orpheus-shaped completions (``<custom_token_N>`` audio
codes over SSE), standing in for vLLM serving Orpheus: no Orpheus weights exist offline."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from plugins.net import free_port
from plugins.orpheus import token_for


def frame_codes(i: int) -> list[int]:
    """Frame i's seven codes: its first code names the frame (100 * (i + 1)), so tests can
    tell frames apart in the decoded audio."""
    return [(100 * (i + 1)) % 4096, 11, 22, 33, 44, 55, 66]


@dataclass
class OrpheusServer:
    frames: int = 20
    silent_frames: int = 0
    per_frame_s: float = 0.01
    endless: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent_frames: int = 0
    disconnected_at: float | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.sent_frames = 0

        async def send(text: str) -> None:
            chunk = {"id": "cmpl", "choices": [{"index": 0, "text": text}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            i = 0
            while self.endless or i < self.frames:
                codes = [0] * 7 if i < self.silent_frames else frame_codes(i)
                text = "".join(token_for(c, i * 7 + k) for k, c in enumerate(codes))
                # split the frame's text mid-token, as a tokenizer's pieces would
                await send(text[:25])
                await send(text[25:])
                self.sent_frames += 1
                i += 1
                await asyncio.sleep(self.per_frame_s)
            await send("<custom_token_2>")
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected_at = time.monotonic()
            raise
        return resp
