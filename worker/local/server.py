"""Embedded local mode: a small web page and its WebRTC offer endpoint, no LiveKit server needed.

``GET /`` serves the page, ``POST /offer`` takes the browser's SDP offer and starts a call on
the process's shared models, ``GET /healthz`` reports readiness. Binds to 127.0.0.1 unless told
otherwise. Bad offers get HTTP 400 with a reason and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import web

from .. import metrics, records
from ..call import run_call
from ..models import Models
from .webrtc import OfferError, WebRTCCall

logger = logging.getLogger("worker.local")

MAX_OFFER_BYTES = 64 * 1024


class LocalServer:
    """The page, the offer endpoint and the calls it started."""

    def __init__(self, models: Models, *, max_calls: int = 4) -> None:
        self._models = models
        self._max_calls = max_calls
        self._calls: dict[str, WebRTCCall] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.draining = False
        self.app = web.Application(client_max_size=MAX_OFFER_BYTES)
        self.app.add_routes(
            [
                web.get("/", self._page),
                web.post("/offer", self._offer),
                web.get("/healthz", self._health),
                web.get("/metrics", self._metrics),
            ]
        )

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def _page(self, _request: web.Request) -> web.Response:
        html = resources.files("worker.local").joinpath("static/index.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html")

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "draining" if self.draining else "ok", "calls": self.active_calls}
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _offer(self, request: web.Request) -> web.Response:
        if self.draining:
            return _error(503, "the worker is shutting down; try again shortly")
        if self.active_calls >= self._max_calls:
            return _error(503, f"busy: {self.active_calls} calls in progress")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'the body must be JSON: {"sdp": ..., "type": "offer"}')
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"offer larger than {MAX_OFFER_BYTES} bytes")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        sdp, kind = body.get("sdp"), body.get("type")
        if not isinstance(sdp, str) or not sdp.strip():
            return _error(400, "missing 'sdp' string")
        if not isinstance(kind, str):
            return _error(400, "missing 'type' string")

        call = WebRTCCall(records.new_call_id())
        try:
            answer = await call.answer(sdp, kind)
        except OfferError as e:
            await call.close()
            return _error(400, str(e))
        self._calls[call.call_id] = call
        task = asyncio.create_task(self._run(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": call.call_id})

    async def _run(self, call: WebRTCCall) -> None:
        try:
            await run_call(self._models, call, profile="web")
        except Exception:
            logger.exception("call %s failed", call.call_id)
        finally:
            self._calls.pop(call.call_id, None)
            await call.close()

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()

    async def stop(self) -> None:
        """Hang up every call, then stop serving."""
        self.draining = True
        for call in list(self._calls.values()):
            call.mark_ended("worker_shutdown")
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._tasks, timeout=10)
        if self._runner is not None:
            await self._runner.cleanup()


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
