"""Tool calls a model writes as text, in the Hermes/Qwen form ``<tool_call>{json}</tool_call>``.

vLLM turns these into OpenAI ``tool_calls`` itself (``--tool-call-parser hermes``); llama.cpp's
Python server renders the tools into the chat template but hands the model's call back as
plain content. This splitter sits on the content stream either way: ordinary words pass
through as they arrive (held back only while they could still be the start of a tag), and
each complete block becomes a tool call, so the caller never hears JSON read aloud. Small
models also drop the tags and reply with the bare JSON object; a reply that opens with ``{``
is held to its end and taken as calls when it parses as them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class TextToolCall:
    name: str
    arguments: str
    """JSON object text, as OpenAI's ``function.arguments``."""


def _parse_block(block: str) -> TextToolCall | None:
    try:
        data = json.loads(block.strip())
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {}
    return TextToolCall(data["name"], json.dumps(args if isinstance(args, dict) else {}))


def _bare_calls(text: str) -> list[TextToolCall] | None:
    """A reply that is nothing but JSON call objects (small models drop the tags)."""
    decoder = json.JSONDecoder()
    calls, pos = [], 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,;":
            pos += 1
        if pos >= len(text):
            break
        try:
            _, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        call = _parse_block(text[pos:end])
        if call is None:
            return None
        calls.append(call)
        pos = end
    return calls or None


class ToolCallSplitter:
    """Feed content deltas; get back the text to speak and any finished tool calls."""

    def __init__(self) -> None:
        self._buf = ""
        self._inside = False
        self._bare: bool | None = None
        """Whether the reply opened with ``{``: then it is held whole and parsed at the end."""
        self.calls: list[TextToolCall] = []

    def feed(self, delta: str) -> str:
        """Text safe to pass on now."""
        if self._bare is None:
            head = (self._buf + delta).lstrip()
            if not head:
                self._buf += delta
                return ""
            self._bare = head.startswith("{")
        if self._bare:
            self._buf += delta
            return ""
        self._buf += delta
        out = []
        while self._buf:
            if self._inside:
                end = self._buf.find(CLOSE)
                if end < 0:
                    break
                call = _parse_block(self._buf[:end])
                if call is not None:
                    self.calls.append(call)
                self._buf = self._buf[end + len(CLOSE) :]
                self._inside = False
                continue
            start = self._buf.find(OPEN)
            if start >= 0:
                out.append(self._buf[:start])
                self._buf = self._buf[start + len(OPEN) :]
                self._inside = True
                continue
            keep = _partial_tag_suffix(self._buf)
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return "".join(out)

    def finish(self) -> str:
        """At the end of the stream: text held back, and an unclosed block if it parses."""
        rest, self._buf = self._buf, ""
        if self._bare:
            calls = _bare_calls(rest)
            if calls is None:
                return rest  # not a call after all: say it
            self.calls.extend(calls)
            return ""
        if self._inside:
            self._inside = False
            call = _parse_block(rest)
            if call is not None:
                self.calls.append(call)
            return ""
        return rest


def _partial_tag_suffix(text: str) -> int:
    """Length of the longest end of ``text`` that begins ``<tool_call>``."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0
