"""The call's LLM cache warm-up never cuts a reply short.

llama-cpp-python's server ends the request it is streaming when another one arrives
(``interrupt_requests``, on by default). The warm-up is sent once the greeting has played;
a caller who speaks at once has a reply request racing it, and a warm-up arriving second cut
the reply to nothing (seen as an empty first reply in the text eval). The endpoint here is a
scripted stand-in with that same rule, so the race is checked in seconds and without a model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from livekit.agents import AgentSession
from livekit.agents.voice.run_result import RunResult

from plugins.net import free_port
from plugins.vllm import LLM, LLMOptions
from worker.agent import VoiceAgent
from worker.evals import EvalCall
from worker.settings import load_settings

pytestmark = pytest.mark.asyncio


class InterruptingEndpoint:
    """Streams "Okay, sure thing." slowly; a new request ends the one being streamed."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.cut: list[dict[str, Any]] = []
        self._streaming: dict[str, Any] | None = None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        mine = self._streaming = body
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = ["Okay", ",", " sure", " thing", "."][: int(body.get("max_tokens") or 5)]
        for word in words:
            await asyncio.sleep(0.05)
            if self._streaming is not mine:  # another request came: this one ends here
                self.cut.append(body)
                break
            delta = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await resp.write(f"data: {json.dumps(delta)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.mark.parametrize("attempt", range(4))
async def test_a_reply_at_once_after_the_greeting_is_never_cut_by_the_warm_up(
    attempt: int,
) -> None:
    endpoint = InterruptingEndpoint()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", endpoint.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    model = LLM(opts=LLMOptions(base_url=f"http://127.0.0.1:{port}/v1", model="m"))
    settings = load_settings(agent={"greeting": "Hello, how can I help?"})
    agent = VoiceAgent(settings.agent, call=EvalCall("warm-race"))
    session: AgentSession[None] = AgentSession(llm=model)
    try:
        await session.start(agent)
        result: RunResult[None] = await session.run(user_input="Do you have parking?")
        await agent.llm_cache_warm()
    finally:
        await session.aclose()
        await model.aclose()
        await runner.cleanup()
    replies = [r for r in endpoint.requests if r.get("max_tokens") != 1]
    assert replies, "the reply reached the endpoint"
    assert not [r for r in endpoint.cut if r.get("max_tokens") != 1], "a reply was cut"
    said = [e.item.text_content for e in result.events if hasattr(e.item, "text_content")]
    assert any("sure thing" in (t or "") for t in said), said
