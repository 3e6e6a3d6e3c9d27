"""Small network helpers shared by the plugins, the tests and the benchmarks."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port the OS just had free on ``host`` (TCP unless ``kind`` says otherwise).

    Another process may take it before the caller binds it; good enough for loopback servers
    started right away by the tests and the embedded LLM."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
