"""An OpenAI-compatible chat endpoint (real HTTP, streamed SSE) whose "model" calls tools.

A stand-in for a tool-capable model behind vLLM: the offline SmolLM2 does not call tools, so
a scripted reply is what exercises the tool path end to end.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from plugins.net import free_port


async def tool_calling_llm(
    requests: list[dict[str, Any]], rules: dict[str, str]
) -> tuple[web.AppRunner, str]:
    """Serve on 127.0.0.1; ``rules`` maps a lower-case substring of the last user message
    (matched without regard to case) to the tool
    to call ("" matches anything), optionally followed by its JSON arguments after a space
    (``'press_keys {"keys": "1#"}'``). Other requests get a one-word text reply."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        requests.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        names = {t["function"]["name"] for t in body.get("tools", [])}
        last = body["messages"][-1]
        text = str(last.get("content") or "") if last["role"] == "user" else None
        said = text.lower() if text is not None else None  # our STT capitalises at will
        calls = [rule.partition(" ") for k, rule in rules.items() if said is not None and k in said]
        tool, _, args = next((c for c in calls if c[0] in names), ("", "", ""))
        if tool:
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": tool, "arguments": args or "{}"}}  # fmt: skip
            delta: dict[str, Any] = {"tool_calls": [call]}
            finish = "tool_calls"
        else:
            delta, finish = {"content": "Okay."}, "stop"
        for chunk in (
            {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        ):
            await resp.write(f"data: {json.dumps({'id': 'x', **chunk})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1"


class ThreadedToolLLM:
    """:func:`tool_calling_llm` on a loop of its own thread, for a worker in another process
    (a module-scoped fixture has no event loop to serve it from)."""

    def __init__(self, rules: dict[str, str]) -> None:
        import asyncio
        import threading

        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._runner, self.url = asyncio.run_coroutine_threadsafe(
            tool_calling_llm(self.requests, rules), self._loop
        ).result(10)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
