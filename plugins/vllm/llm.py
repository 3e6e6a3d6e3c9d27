"""An ``llm.LLM`` over an OpenAI-compatible chat completions endpoint (vLLM, llama.cpp).

Written on aiohttp rather than a vendor SDK so that the HTTP stream is ours: when a reply is
interrupted or a speculative one cancelled, the response is closed at once and the server
(vLLM aborts on disconnect) stops generating. A model may be a LoRA adapter name served by vLLM.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    llm,
)
from livekit.agents.llm import ToolChoice
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from ..http import LoopSessions, sse_data
from ..net import Repinning
from .log import logger
from .tool_text import ToolCallSplitter


@dataclass
class LLMOptions:
    """Where the endpoint is and how to ask it."""

    base_url: str
    model: str
    api_key: str = ""
    temperature: float = 0.4
    max_tokens: int = 120
    connect_timeout: float = 2.0
    timeout: float = 10.0
    """Seconds allowed between tokens."""
    first_token_timeout: float = 30.0
    """Seconds allowed until the first token: the server may first have to read a long
    prompt it has not cached (a cold system prompt on a slow CPU takes tens of seconds)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    words_only_grammar: str | None = None
    """A grammar (llama.cpp's GBNF) sent with ``tool_choice="none"``: a reply that may not
    open as a tool call. Small models write a call's JSON even when told not to."""
    resolver: Callable[[str], Awaitable[str]] | None = None
    """Model (or LoRA voice) name -> base URL, asked per request: the router in
    ``infra.router``, which keeps a session on the GPU that holds its adapter."""


async def first_served_model(base_url: str, api_key: str = "") -> str:
    """The first model an endpoint lists at ``/models``: the name to use when none is set."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as http,
            http.get(url, headers=headers) as resp,
        ):
            body = await resp.json(content_type=None) if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise APIConnectionError(f"cannot list the models of {base_url}: {e}") from e
    models = body.get("data") if isinstance(body, dict) else None
    if not models or not isinstance(models[0], dict) or not models[0].get("id"):
        raise APIConnectionError(f"{url} lists no model; set llm.model")
    return str(models[0]["id"])


class LLM(llm.LLM):
    """OpenAI-compatible streaming chat completions."""

    def __init__(self, *, opts: LLMOptions) -> None:
        super().__init__()
        self._opts = opts
        self._sessions = LoopSessions(connect_timeout=opts.connect_timeout)

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return "vllm"

    @property
    def options(self) -> LLMOptions:
        return self._opts

    def _http(self) -> aiohttp.ClientSession:
        return self._sessions.get()

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> LLMStream:
        body: dict[str, Any] = dict(self._opts.extra_body)
        if isinstance(extra_kwargs, dict):
            body.update(extra_kwargs)
        if tools:
            body["tools"] = llm.ToolContext(tools).parse_function_tools("openai", strict=False)
            if isinstance(tool_choice, str | dict):
                body["tool_choice"] = tool_choice
            if tool_choice == "none" and self._opts.words_only_grammar:
                body["grammar"] = self._opts.words_only_grammar
        return LLMStream(
            self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options, body=body
        )

    async def aclose(self) -> None:
        await self._sessions.aclose()


class LLMStream(llm.LLMStream):
    """One streamed completion; closing it closes the HTTP response."""

    def __init__(
        self,
        llm_: LLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
        body: dict[str, Any],
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._llm_impl = llm_
        self._body = body
        self._text_calls = ToolCallSplitter()

    async def _run(self) -> None:
        opts = self._llm_impl.options
        messages, _ = self._chat_ctx.to_provider_format("openai")
        for message in messages:  # many chat templates read every message's content
            if message.get("content") is None:
                message["content"] = ""
        payload = {
            "model": opts.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": opts.temperature,
            "max_tokens": opts.max_tokens,
            **self._body,
        }
        headers = {"Content-Type": "application/json"}
        if opts.api_key:
            headers["Authorization"] = f"Bearer {opts.api_key}"
        base = await self._resolve()
        request_id = uuid.uuid4().hex[:12]
        tool_calls: dict[int, dict[str, str]] = {}
        self._text_calls = ToolCallSplitter()  # fresh on a retry
        started = time.perf_counter()
        wait = opts.first_token_timeout
        try:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(opts.connect_timeout + wait):
                        resp = await self._llm_impl._http().post(
                            base.rstrip("/") + "/chat/completions", json=payload, headers=headers
                        )
                    break
                except aiohttp.ClientConnectorError as e:
                    # the session's node is gone: the router pins it elsewhere, and the reply
                    # is asked there once before the caller hears the apology
                    if attempt == 2 or not isinstance(opts.resolver, Repinning):
                        raise
                    logger.warning("LLM node %s refused (%s); re-pinning and retrying", base, e)
                    await opts.resolver.unreachable(opts.model, base)
                    base = await self._resolve()
            async with resp:
                if resp.status != 200:
                    text = (await resp.text())[:500]
                    raise APIStatusError(
                        f"LLM endpoint answered {resp.status}: {text}",
                        status_code=resp.status,
                        body=text,
                        retryable=resp.status >= 500 or resp.status == 429,
                    )
                async for data in sse_data(resp.content, first_wait=wait, each_wait=opts.timeout):
                    self._handle(json.loads(data), request_id, tool_calls)
                    wait = opts.timeout
        except TimeoutError as e:
            raise APITimeoutError(f"LLM endpoint {base} gave no token for {wait:.1f}s") from e
        except aiohttp.ClientError as e:
            raise APIConnectionError(f"LLM endpoint {base} unreachable: {e}") from e
        except json.JSONDecodeError as e:
            raise APIConnectionError(f"LLM endpoint sent malformed data: {e}") from e
        self._send_text(request_id, self._text_calls.finish())
        for text_call in self._text_calls.calls:  # written as text: see tool_text
            tool_calls[len(tool_calls)] = {
                "id": "", "name": text_call.name, "arguments": text_call.arguments,
            }  # fmt: skip
        for call in tool_calls.values():
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    delta=llm.ChoiceDelta(
                        role="assistant",
                        tool_calls=[
                            llm.FunctionToolCall(
                                name=call["name"],
                                arguments=call["arguments"] or "{}",
                                call_id=call["id"] or uuid.uuid4().hex[:12],
                            )
                        ],
                    ),
                )
            )
        logger.debug(
            "completion %s done in %.0f ms", request_id, (time.perf_counter() - started) * 1e3
        )

    async def _resolve(self) -> str:
        """The base URL for this request: the resolver's (the router's node) or the fixed one."""
        opts = self._llm_impl.options
        if opts.resolver is None:
            return opts.base_url
        try:
            return await opts.resolver(opts.model)
        except LookupError as e:
            raise APIConnectionError(f"no backend for {opts.model}: {e}") from e

    def _handle(
        self, chunk: dict[str, Any], request_id: str, tool_calls: dict[int, dict[str, str]]
    ) -> None:
        usage = chunk.get("usage")
        if usage:
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    usage=llm.CompletionUsage(
                        completion_tokens=usage.get("completion_tokens", 0),
                        prompt_tokens=usage.get("prompt_tokens", 0),
                        total_tokens=usage.get("total_tokens", 0),
                    ),
                )
            )
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for tc in delta.get("tool_calls") or []:
                slot = tool_calls.setdefault(
                    int(tc.get("index", 0)), {"id": "", "name": "", "arguments": ""}
                )
                fn = tc.get("function") or {}
                slot["id"] = tc.get("id") or slot["id"]
                name = fn.get("name") or ""
                if not slot["name"].endswith(name):  # llama.cpp repeats it in every delta
                    slot["name"] += name
                slot["arguments"] += fn.get("arguments") or ""
            content = delta.get("content")
            if content:
                self._send_text(request_id, self._text_calls.feed(content))

    def _send_text(self, request_id: str, text: str) -> None:
        if text:
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=text))
            )
