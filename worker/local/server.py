"""Embedded local mode: a small web page and its WebRTC offer endpoint, no LiveKit server needed.

``GET /`` serves the page, ``POST /offer`` takes the browser's SDP offer and starts a call on
the process's shared models, ``GET /healthz`` reports readiness. Binds to 127.0.0.1 unless told
otherwise. Bad offers get HTTP 400 with a reason and the server keeps serving.

Every call, whatever its transport, takes a slot of one :class:`~telephony.call.CallSlots`
before its first ``await``, so a burst never admits more than the limit. Requests that carry
an ``Origin`` (anything a browser sends on a page's behalf) must come from this server's own
page, and offers must be ``application/json``: a page elsewhere cannot start calls here.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hmac
import logging
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import RTCIceServer

from plugins.http import AppServer
from telephony import twilio, wire
from telephony.call import Call, CallSlot, CallSlots

from .. import metrics, records
from ..call import run_call
from ..models import Models
from ..session import Profile
from .origin import cross_site
from .webrtc import OfferError, WebRTCCall
from .ws_guard import prepare_masked

logger = logging.getLogger("worker.local")

MAX_OFFER_BYTES = 64 * 1024
TOKEN_COOKIE = "voice_worker_token"


class LocalServer(AppServer):
    """The page, the offer endpoint and the calls it started."""

    def __init__(
        self,
        models: Models,
        *,
        max_calls: int = 4,
        token: str = "",
        slots: CallSlots | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        allowed_origins: list[str] | None = None,
    ) -> None:
        self._models = models
        self._token = token
        self.slots = slots or CallSlots(max_calls)
        self._ice_servers = list(ice_servers or [])
        self._allowed_origins = {o.rstrip("/").lower() for o in allowed_origins or []}
        self._bound_host = "127.0.0.1"
        self._calls: dict[str, Call] = {}
        self._phone_calls: dict[str, Call] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
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
        """Same-origin requests only; then, with a token set, the page, offers and metrics need
        it: ``?token=`` once (then a cookie), or ``Authorization: Bearer``. Health stays open;
        Twilio has its signature."""
        refused = self._cross_site(request)
        if refused:
            logger.warning("refused %s %s: %s", request.method, request.path, refused)
            return _error(403, refused)
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

    def _cross_site(self, request: web.Request) -> str:
        if request.path == "/healthz":
            return ""
        return cross_site(request, self._bound_host, self._allowed_origins)

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
        slot = self._admit()
        if isinstance(slot, web.Response):
            return slot
        try:
            return await self._twilio_stream(request)
        finally:
            slot.release()

    async def _twilio_stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=twilio.MAX_MESSAGE_BYTES, heartbeat=30)
        close: tuple[int, str] | None = None

        def unmasked() -> None:
            nonlocal close
            close = (WSCloseCode.PROTOCOL_ERROR, "client frames must be masked (RFC 6455)")
            closer = asyncio.ensure_future(ws.close(code=close[0], message=close[1].encode()))
            self._tasks.add(closer)
            closer.add_done_callback(self._tasks.discard)

        frames = await prepare_masked(ws, request, unmasked)
        call: twilio.TwilioCall | None = None
        task: asyncio.Task[Any] | None = None
        try:
            async for message in ws:
                if frames.unmasked:
                    break
                if message.type != WSMsgType.TEXT:
                    if message.type == WSMsgType.BINARY:
                        close = (WSCloseCode.UNSUPPORTED_DATA, "binary frames are not allowed")
                    break
                try:
                    msg = twilio.parse_message(message.data)
                    event = msg["event"]
                    if event == "start":
                        if call is not None:
                            raise twilio.TwilioProtocolError("a second 'start' on one stream")
                        call = twilio.TwilioCall(
                            records.new_call_id(),
                            stream_sid=msg["_stream_sid"],
                            send=ws.send_json,
                            caller=msg["_caller"],
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
                    close = (WSCloseCode.UNSUPPORTED_DATA, str(e))
                    break
        finally:
            if frames.unmasked:
                close = (WSCloseCode.PROTOCOL_ERROR, "client frames must be masked (RFC 6455)")
            if call is not None:
                call.mark_ended("caller_hangup" if close is None else "protocol_error")
            if close is not None:
                logger.warning("closing twilio stream with %d: %s", close[0], close[1])
                await ws.close(code=close[0], message=close[1].encode()[:120])
            elif not ws.closed:
                await ws.close()
            if task is not None:
                await asyncio.wait({task}, timeout=15)
        return ws

    async def _metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _admit(self) -> CallSlot | web.Response:
        """A place for one more call, or the 503 that says why there is none. Taken before
        any await, so a burst of requests admits exactly the limit."""
        if self.draining:
            return _error(503, "the worker is shutting down; try again shortly")
        slot = self.slots.take()
        if slot is None:
            return _error(503, f"busy: {self.slots.in_use} calls in progress")
        return slot

    async def _offer(self, request: web.Request) -> web.Response:
        slot = self._admit()
        if isinstance(slot, web.Response):
            return slot
        try:
            response = await self._answer_offer(request, slot)
        except BaseException:
            slot.release()
            raise
        if response.status != 200:
            slot.release()  # refused: the slot was never a call's
        return response

    async def _answer_offer(self, request: web.Request, slot: CallSlot) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        sdp, kind = body.get("sdp"), body.get("type")
        if not isinstance(sdp, str) or not sdp.strip():
            return _error(400, "missing 'sdp' string")
        if not isinstance(kind, str):
            return _error(400, "missing 'type' string")

        call = WebRTCCall(records.new_call_id(), ice_servers=self._ice_servers)
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
        task.add_done_callback(lambda _: slot.release())  # the call holds it to its very end
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
        self._bound_host = host
        await super().start(host, port)

    async def stop(self) -> None:
        """Hang up every call, then stop serving."""
        self.draining = True
        for call in list(self._calls.values()):
            call.mark_ended("worker_shutdown")
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._tasks, timeout=10)
        await super().stop()


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or the error response that says why there is none.

    ``application/json`` only (415 otherwise: a form or ``text/plain`` post is what a page
    elsewhere could send without asking); the charset, the encoding, the size, the nesting and
    the numbers are all checked, each failure a 4xx with a reason.
    """
    try:
        raw = await request.read()  # read first, so a refused request leaves nothing unread
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"offer larger than {MAX_OFFER_BYTES} bytes")
    except Exception as e:  # aiohttp's payload errors: a corrupt deflate body, a cut-off read
        return _error(400, f"unreadable body: {type(e).__name__}")
    if request.content_type != "application/json":
        return _error(415, "the body must be application/json")
    charset = request.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        return _error(415, f"unsupported charset {charset[:40]!r}")
    try:
        return wire.load_json(raw.decode(charset), "the body")
    except UnicodeDecodeError:
        return _error(400, f"the body is not valid {charset[:40]}")
    except wire.WireError as e:
        return _error(400, f'{e}; send {{"sdp": ..., "type": "offer"}}')
