"""Which requests a page on another site made: the ``Origin`` check both web servers apply
(the local page's and the LiveKit web client's)."""

from __future__ import annotations

import contextlib

from aiohttp import web
from yarl import URL

from plugins.net import is_loopback


def cross_site(request: web.Request, bound_host: str, allowed_origins: set[str]) -> str:
    """Why a request looks like another site's doing (empty when it does not).

    A browser names the page behind each request it sends on a page's behalf in ``Origin``;
    only this server's own page, or one of ``allowed_origins`` (lower case, no trailing
    slash), may use it. Bound to loopback, "own" also means a loopback ``Host``: a DNS-rebound
    name that resolves to 127.0.0.1 is another site. Requests without ``Origin`` (curl, Twilio,
    a proxy's health check) are not a page's doing and pass.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return ""
    given = origin.rstrip("/").lower()
    if given in allowed_origins:
        return ""
    loopback = is_loopback(bound_host)
    if loopback and not is_loopback(request.url.host or ""):
        return (
            f"unexpected Host {request.host[:60]!r} for a server on loopback "
            "(behind a proxy, add the page's origin to http.allowed_origins)"
        )
    if given == f"{request.scheme}://{request.host}".lower():
        return ""
    if loopback and given.startswith(("http://", "https://")):
        with contextlib.suppress(ValueError):
            url = URL(given)
            if is_loopback(url.host or "") and url.port == request.url.port:
                return ""  # the same page under another loopback name (localhost, ::1)
    return f"cross-origin request from {origin[:80]!r}"
