"""Fixed lines synthesised once per process and replayed.

The greeting, the goodbye, the transfer notice and the closing line are the same words on
every call, in the same voice. Synthesising the greeting when a call is answered made every
caller wait for it (~0.6 s on two cores before the first sample); replaying audio made at
load costs nothing. Lines are kept as raw PCM and replayed as fresh frames, so any number of
calls can play the same line at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.types import NOT_GIVEN
from livekit.agents.voice import SpeechHandle

from .settings import AgentSettings

logger = logging.getLogger("worker.phrases")


@dataclass(frozen=True)
class _Audio:
    pcm: bytes
    sample_rate: int
    num_channels: int


class Phrases:
    """Audio for fixed lines, made with the sessions' own TTS (engine-neutral API)."""

    def __init__(self, tts: Any) -> None:
        self._tts = tts
        self._audio: dict[str, _Audio] = {}
        self.synthesised = 0
        self.replayed = 0

    def __contains__(self, text: str) -> bool:
        return text in self._audio

    async def prepare(self, texts: Iterable[str]) -> None:
        """Synthesise each line not yet held; a line that fails is left to live synthesis."""
        for text in texts:
            if not text.strip() or text in self._audio:
                continue
            started = time.perf_counter()
            try:
                frames = []
                async with self._tts.synthesize(text) as stream:
                    async for ev in stream:
                        frames.append(ev.frame)
            except Exception as e:  # the call still gets the line, synthesised when said
                logger.warning("could not prepare %r: %s", text, e)
                continue
            if not frames:
                continue
            self._audio[text] = _Audio(
                b"".join(bytes(f.data) for f in frames), frames[0].sample_rate,
                frames[0].num_channels,
            )  # fmt: skip
            self.synthesised += 1
            logger.debug("prepared %r in %.2fs", text, time.perf_counter() - started)

    def replay(self, text: str, frame_ms: int = 20) -> AsyncIterator[rtc.AudioFrame] | None:
        """Fresh frames of a prepared line, or ``None`` for a line not prepared."""
        audio = self._audio.get(text)
        if audio is None:
            return None
        self.replayed += 1
        return _frames(audio, frame_ms)

    def say(self, session: AgentSession[Any], text: str, **kwargs: Any) -> SpeechHandle:
        """``session.say`` with the prepared audio when there is some."""
        return session.say(text, audio=self.replay(text) or NOT_GIVEN, **kwargs)


async def _frames(audio: _Audio, frame_ms: int) -> AsyncIterator[rtc.AudioFrame]:
    per_frame = audio.sample_rate * frame_ms // 1000
    step = per_frame * audio.num_channels * 2
    for i in range(0, len(audio.pcm), step):
        chunk = audio.pcm[i : i + step]
        yield rtc.AudioFrame(
            chunk, audio.sample_rate, audio.num_channels, len(chunk) // (2 * audio.num_channels)
        )


def fixed_lines(agent: AgentSettings) -> list[str]:
    """The lines every call may say word for word."""
    return [agent.greeting, agent.goodbye, agent.transfer_notice, agent.closing]
