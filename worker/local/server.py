"""Embedded local mode: a small web page and its WebRTC offer endpoint, no LiveKit server needed.

``GET /`` serves the page, ``POST /offer`` takes the browser's SDP offer and starts a call on
the process's shared models, ``GET /healthz`` reports readiness. Binds to 127.0.0.1 unless told
otherwise. Bad offers get HTTP 400 with a reason and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from telephony import twilio
from telephony.call import Call

from .. import metrics, records
from ..call import run_call
from ..models import Models
from ..session import Profile
from .webrtc import OfferError, WebRTCCall

logger = logging.getLogger("worker.local")

MAX_OFFER_BYTES = 64 * 1024
TOKEN_COOKIE = "voice_worker_token"


class LocalServer:
    """The page, the offer endpoint and the calls it started."""

    def __init__(self, models: Models, *, max_calls: int = 4, token: str = "") -> None:
        self._models = models
        self._token = token
        self._max_calls = max_calls
        self._calls: dict[str, Call] = {}
        self._phone_calls: dict[str, Call] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.draining = False
        self.app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[self._guard])
        self.app.add_routes(
            [
                web.get("/", self._page),
                web.post("/offer", self._offer),
                web.get("/healthz", self._health),
                web.get("/metrics", self._metrics),
                web.get("/twilio/media", self._twilio),
            ]
        )

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With a token set, the page, offers and metrics need it: ``?token=`` once (then a
        cookie), or ``Authorization: Bearer``. Health stays open; Twilio has its signature."""
        if not self._token or request.path in ("/healthz", "/twilio/media"):
            return await handler(request)
        given = (
            request.query.get("token")
            or request.cookies.get(TOKEN_COOKIE)
            or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        )
        if not given or not hmac.compare_digest(given.encode(), self._token.encode()):
            return _error(401, "this page needs its access token (?token=...)")
        response = await handler(request)
        if request.query.get("token"):
            response.set_cookie(TOKEN_COOKIE, self._token, httponly=True, samesite="Strict")
        return response

    @property
    def active_calls(self) -> int:
        return len(self._calls) + len(self._phone_calls)

    def calls(self) -> list[Call]:
        """Every call in progress on this server (web, Twilio, and phone calls it runs)."""
        return [*self._calls.values(), *self._phone_calls.values()]

    async def _page(self, _request: web.Request) -> web.Response:
        html = resources.files("worker.local").joinpath("static/index.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html")

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "draining" if self.draining else "ok", "calls": self.active_calls}
        )

    async def _twilio(self, request: web.Request) -> web.StreamResponse:
        """A Twilio Media Streams WebSocket: one phone call."""
        tw = self._models.settings.twilio
        token = tw.auth_token.get_secret_value()
        if token:
            url = tw.public_url or str(
                request.url.with_scheme(
                    "wss"
                    if request.headers.get("X-Forwarded-Proto", request.scheme) in ("https", "wss")
                    else "ws"
                )
            )
            if not twilio.signature_valid(token, url, request.headers.get("X-Twilio-Signature")):
                logger.warning("twilio stream refused: bad or missing signature")
                return _error(403, "invalid X-Twilio-Signature")
        if self.draining:
            return _error(503, "the worker is shutting down; try again shortly")
        if len(self._calls) >= self._max_calls:
            return _error(503, "busy")
        ws = web.WebSocketResponse(max_msg_size=twilio.MAX_MESSAGE_BYTES, heartbeat=30)
        await ws.prepare(request)
        call: twilio.TwilioCall | None = None
        task: asyncio.Task[Any] | None = None
        close_reason = ""
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    if message.type == WSMsgType.BINARY:
                        close_reason = "binary frames are not part of Media Streams"
                    break
                try:
                    msg = twilio.parse_message(message.data)
                    event = msg["event"]
                    if event == "start":
                        if call is not None:
                            raise twilio.TwilioProtocolError("a second 'start' on one stream")
                        start = msg["start"]
                        call = twilio.TwilioCall(
                            records.new_call_id(),
                            stream_sid=start.get("streamSid") or msg["streamSid"],
                            send=ws.send_json,
                            caller=(start.get("customParameters") or {}).get("from"),
                        )
                        self._calls[call.call_id] = call
                        call.start_sending()
                        task = asyncio.create_task(self._run(call, "telephony"))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    elif event in ("media", "dtmf", "mark", "stop") and call is None:
                        raise twilio.TwilioProtocolError(f"'{event}' before 'start'")
                    elif event == "media" and call is not None:
                        call.receive_media(msg["_audio"])
                    elif event == "dtmf" and call is not None:
                        call.dtmf_received(msg["dtmf"]["digit"])
                    elif event == "stop" and call is not None:
                        call.mark_ended("caller_hangup")
                        break
                except twilio.TwilioProtocolError as e:
                    close_reason = str(e)
                    break
        finally:
            if call is not None:
                call.mark_ended("caller_hangup" if not close_reason else "protocol_error")
            if close_reason:
                logger.warning("closing twilio stream: %s", close_reason)
                await ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA, message=close_reason.encode()[:120]
                )
            elif not ws.closed:
                await ws.close()
            if task is not None:
                await asyncio.wait({task}, timeout=15)
        return ws

    async def _metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _offer(self, request: web.Request) -> web.Response:
        if self.draining:
            return _error(503, "the worker is shutting down; try again shortly")
        if len(self._calls) >= self._max_calls:
            return _error(503, f"busy: {len(self._calls)} calls in progress")
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
            with contextlib.suppress(Exception):  # a half-negotiated peer may fail to close
                await call.close()
            return _error(400, str(e))
        self._calls[call.call_id] = call
        task = asyncio.create_task(self._run(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": call.call_id})

    async def run_phone_call(self, call: Call) -> None:
        """Hold a call that arrived on another transport (SIP) with the telephony profile."""
        self._phone_calls[call.call_id] = call
        try:
            await self._run(call, "telephony")
        finally:
            self._phone_calls.pop(call.call_id, None)

    async def _run(self, call: Call, profile: Profile = "web") -> None:
        try:
            await run_call(self._models, call, profile=profile)
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
