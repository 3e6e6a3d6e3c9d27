"""The web client for LiveKit rooms: a page that joins a fresh room with the browser's
microphone and shows the live transcript, and the token endpoint it gets its access from.

``POST /token`` mints a short-lived token (``livekit.token_ttl``) that can only join one new
room, publish a microphone, subscribe and send data; the token's room configuration dispatches
our agent (``livekit.agent_name``) into the room when the caller joins. Binds to 127.0.0.1
unless told otherwise. A request a page elsewhere sends (its ``Origin`` not this page's, nor
one of ``http.allowed_origins``) gets 403, as on the local page.
"""

from __future__ import annotations

import datetime
import logging
import secrets
from importlib import resources
from typing import Any

from aiohttp import web
from livekit import api
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import room as room_pb

from plugins.http import AppServer

from ..local.origin import cross_site
from ..settings import Settings

logger = logging.getLogger("worker.web")


def mint_token(settings: Settings, room: str, identity: str) -> str:
    """A join-only token for one room, which also dispatches our agent into it."""
    lk = settings.livekit
    if not (lk.api_key and lk.api_secret):
        raise ValueError("LIVEKIT_API_KEY and LIVEKIT_API_SECRET are needed to mint tokens")
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True,
        can_publish_data=True, can_publish_sources=["microphone"],
    )  # fmt: skip
    config = room_pb.RoomConfiguration(
        agents=[dispatch_pb.RoomAgentDispatch(agent_name=lk.agent_name)],
        empty_timeout=60,
    )
    return (
        api.AccessToken(lk.api_key, lk.api_secret.get_secret_value())
        .with_identity(identity)
        .with_name("web caller")
        .with_grants(grants)
        .with_room_config(config)
        .with_ttl(datetime.timedelta(seconds=lk.token_ttl))
        .to_jwt()
    )


class WebClientServer(AppServer):
    """``GET /`` the page, ``GET /livekit-client.umd.js`` the SDK, ``POST /token`` access."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = web.Application(client_max_size=4096, middlewares=[self._same_site])
        self._host = "127.0.0.1"
        self._allowed = {o.rstrip("/").lower() for o in settings.http.allowed_origins}
        self.app.add_routes(
            [
                web.get("/", self._page),
                web.get("/livekit-client.umd.js", self._sdk),
                web.post("/token", self._token),
            ]
        )

    @web.middleware
    async def _same_site(self, request: web.Request, handler: Any) -> web.StreamResponse:
        refused = cross_site(request, self._host, self._allowed)
        if refused:
            logger.warning("refused %s %s: %s", request.method, request.path, refused)
            return web.json_response({"error": refused}, status=403)
        response: web.StreamResponse = await handler(request)
        return response

    async def _page(self, _r: web.Request) -> web.Response:
        html = resources.files("worker.web").joinpath("static/livekit.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html")

    async def _sdk(self, _r: web.Request) -> web.StreamResponse:
        path = self.settings.models_dir / "web/livekit-client.umd.js"
        if not path.exists():
            return web.Response(
                status=404,
                text="// run `python -m worker download-files --with livekit-client`\n",
                content_type="application/javascript",
            )
        return web.FileResponse(path, headers={"Content-Type": "application/javascript"})

    async def _token(self, _r: web.Request) -> web.Response:
        lk = self.settings.livekit
        room = f"web-{secrets.token_hex(5)}"
        identity = f"web-{secrets.token_hex(4)}"
        try:
            token = mint_token(self.settings, room, identity)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=503)
        logger.info("token for %s in room %s", identity, room)
        return web.json_response(
            {"url": lk.public_url or lk.url, "token": token, "room": room, "identity": identity}
        )

    async def start(self, host: str, port: int) -> None:
        self._host = host
        await super().start(host, port)
