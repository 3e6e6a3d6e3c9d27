"""The agent: instructions and greeting from settings, and a spoken apology on LLM failure."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable

from livekit.agents import Agent, APIError, llm
from livekit.agents.types import FlushSentinel
from livekit.agents.voice.agent import ModelSettings

from .settings import AgentSettings

logger = logging.getLogger("worker.agent")


class VoiceAgent(Agent):
    """A phone/web voice agent. Never leaves the caller in silence when the LLM fails."""

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__(instructions=settings.instructions)
        self._settings = settings
        self.llm_failures = 0

    async def on_enter(self) -> None:
        if self._settings.greeting:
            self.session.say(self._settings.greeting, allow_interruptions=True)

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncGenerator[llm.ChatChunk | str | FlushSentinel, None]:
        """The default LLM node, with the LLM's failure turned into a short apology."""
        produced = False
        stream: AsyncIterable[llm.ChatChunk | str | FlushSentinel] = Agent.default.llm_node(
            self, chat_ctx, tools, model_settings
        )
        try:
            async for chunk in stream:
                produced = True
                yield chunk
        except APIError as e:
            self.llm_failures += 1
            logger.warning("LLM failed (%s); apologising to the caller", e)
            yield (" " if produced else "") + self._settings.apology
