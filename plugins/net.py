"""Small network helpers shared by the plugins, the tests and the benchmarks."""

from __future__ import annotations

import socket
from typing import Protocol, runtime_checkable


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port the OS just had free on ``host`` (TCP unless ``kind`` says otherwise).

    Another process may take it before the caller binds it; good enough for loopback servers
    started right away by the tests and the embedded LLM."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) stays on this machine."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@runtime_checkable
class Repinning(Protocol):
    """A resolver (model name -> base URL) that can move its session off a node that refused
    the connection; the router's session routes are one. The plugins retry a request once
    after telling it, before the caller hears an apology."""

    async def __call__(self, model: str) -> str: ...

    async def unreachable(self, model: str, base_url: str) -> None: ...
