"""HTTP sessions that are safe to share a plugin between event loops.

An ``aiohttp.ClientSession`` belongs to the event loop it was made on. The LiveKit worker runs
each job as a thread with its own loop while the plugins (TTS, STT and LLM clients) are loaded
once per process, so a client keeps one session per loop: :class:`LoopSessions`. A job closes
the sessions of its own loop when it ends (:func:`close_loop_sessions`), so none outlives the
loop it was made on.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

_lock = threading.Lock()
_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary()
)


class LoopSessions:
    """One ``aiohttp.ClientSession`` per running event loop, made on first use: how every
    plugin talks HTTP. Connecting is always bounded; ``read_timeout`` bounds each read of a
    response (None for long-lived streams, which bound their waits themselves)."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float | None = None):
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._factory: Callable[[], aiohttp.ClientSession] = lambda: aiohttp.ClientSession(
            timeout=timeout
        )
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]
        self._sessions = weakref.WeakKeyDictionary()

    def get(self) -> aiohttp.ClientSession:
        """The calling loop's session (call from a coroutine)."""
        loop = asyncio.get_running_loop()
        with _lock:
            session = self._sessions.get(loop)
            if session is None or session.closed:
                session = self._factory()
                self._sessions[loop] = session
                _by_loop.setdefault(loop, []).append(session)
            return session

    async def aclose(self) -> None:
        """Close the calling loop's session (the others close with their own loops)."""
        with _lock:
            session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()


async def close_loop_sessions() -> None:
    """Close every plugin session made on the calling loop (a job's last step)."""
    with _lock:
        sessions = _by_loop.pop(asyncio.get_running_loop(), [])
    for session in sessions:
        if not session.closed:
            await session.close()


class AppServer:
    """Serves ``self.app`` on one address: the start and stop every HTTP server here shares."""

    app: web.Application
    _runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:  # the port is taken: leave nothing half started
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def sse_data(
    content: aiohttp.StreamReader, *, first_wait: float | None = None,
    each_wait: float | None = None,
) -> AsyncIterator[str]:  # fmt: skip
    """The ``data:`` payloads of a server-sent event stream (OpenAI's streaming format), up to
    ``[DONE]`` or the end of the body. ``first_wait`` bounds the wait for the first payload (in
    seconds), ``each_wait`` each one after it (``TimeoutError`` when exceeded; None: no bound)."""
    wait = first_wait
    while True:
        async with asyncio.timeout(wait):
            line = await content.readline()
        if not line:
            return
        line = line.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, other fields
        data = line[5:].strip().decode("utf-8", "replace")
        if data == "[DONE]":
            return
        yield data
        wait = each_wait
