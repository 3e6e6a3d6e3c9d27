"""Orpheus as a streaming ``tts.TTS``: speech tokens from a vLLM completions endpoint, decoded
with SNAC in sliding windows as they arrive.

The LLM's reply is cut into sentences; each request to the speech server carries
``sentences_per_request`` sentences (1 starts soonest; more gives the model context for
intonation). Audio codes are parsed from the token stream as it arrives and every new frame
is decoded in a four-frame window, so the first audio goes out about four frames (a third of
a second of audio) after the first token. Leading silence (the stock voices open with ~600 ms
of it) is trimmed from each reply and the trimmed length reported. Closing the stream (an
interruption) closes the HTTP response, which makes vLLM stop generating.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    tokenize,
    tts,
)

from ..audio import start_pcm_stream, to_int16
from ..http import LoopSessions, sse_data
from ..lk_private import synthesize_with_stream
from ..net import Repinning
from .decoder import SAMPLE_RATE, SAMPLES_PER_FRAME, WINDOW_FRAMES
from .log import logger
from .tokens import CODES_PER_FRAME, CodeParser, prompt

Decoder = Callable[[list[list[int]]], np.ndarray]
"""Consecutive 7-code frames -> their float32 audio, ``SAMPLES_PER_FRAME`` per frame."""

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snac")
    return _pool


@dataclass
class OrpheusOptions:
    base_url: str | None = None
    """OpenAI-compatible base URL (``http://gpu:8000/v1``); unset when ``resolver`` is used."""
    voice: str = "tara"
    """Speaker name written into the prompt."""
    model: str | None = None
    """Model or LoRA adapter name sent to the server; defaults to ``voice``."""
    api_key: str = ""
    sentences_per_request: int = 1
    trim_silence: bool = True
    silence_level: float = 0.01
    """Peak amplitude (of 1.0) below which leading audio counts as silence."""
    max_tokens: int = 1200
    temperature: float = 0.6
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    timeout: float = 10.0
    """Seconds without a token before a request fails."""
    resolver: Callable[[str], Awaitable[str]] | None = None
    """Voice -> base URL (the router), asked once per request."""
    extra_body: dict[str, Any] = field(default_factory=dict)


class TTS(tts.TTS):
    """Orpheus on vLLM, 24 kHz mono."""

    def __init__(self, *, opts: OrpheusOptions, decoder: Decoder) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True), sample_rate=SAMPLE_RATE,
            num_channels=1,
        )  # fmt: skip
        if not opts.base_url and opts.resolver is None:
            raise ValueError("Orpheus needs base_url or a resolver")
        self.opts = opts
        self.decoder = decoder
        self._sentences = tokenize.blingfire.SentenceTokenizer(min_sentence_len=8)
        self._http = LoopSessions(read_timeout=opts.timeout)
        self.trimmed: list[float] = []
        """Seconds of leading silence trimmed, one entry per reply."""
        self.on_trimmed: Callable[[float], None] | None = None

    @property
    def model(self) -> str:
        return self.opts.model or self.opts.voice

    @property
    def provider(self) -> str:
        return "orpheus-vllm"

    def http(self) -> aiohttp.ClientSession:
        return self._http.get()

    async def aclose(self) -> None:
        await self._http.aclose()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return synthesize_with_stream(self, text, conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        return SynthesizeStream(tts=self, conn_options=conn_options)

    def _report_trim(self, seconds: float) -> None:
        self.trimmed.append(seconds)
        del self.trimmed[:-100]
        logger.debug("trimmed %.0f ms of leading silence", seconds * 1000)
        if self.on_trimmed is not None:
            self.on_trimmed(seconds)


class _Trimmer:
    """Drops a reply's leading silence, keeping 20 ms before the first sound."""

    def __init__(self, level: float, enabled: bool) -> None:
        self.level, self.enabled = level, enabled
        self.dropped = 0
        self.done = not enabled
        self._keep = int(0.02 * SAMPLE_RATE)
        self._held = np.zeros(0, dtype=np.float32)

    def push(self, audio: np.ndarray) -> np.ndarray:
        if self.done:
            return audio
        loud = np.flatnonzero(np.abs(audio) > self.level)
        if loud.size == 0:
            tail = np.concatenate([self._held, audio])[-self._keep :]
            self.dropped += self._held.size + audio.size - tail.size
            self._held = tail
            return np.zeros(0, dtype=np.float32)
        self.done = True
        joined = np.concatenate([self._held, audio])
        start = max(0, self._held.size + int(loud[0]) - self._keep)
        self.dropped += start
        return joined[start:]


class SynthesizeStream(tts.SynthesizeStream):
    """Text in as the LLM writes it; audio out frame by frame."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._orpheus = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = start_pcm_stream(output_emitter, SAMPLE_RATE)
        o = self._orpheus.opts
        sentences = self._orpheus._sentences.stream()
        chunks: asyncio.Queue[str | None] = asyncio.Queue()

        async def feed() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    sentences.flush()
                else:
                    sentences.push_text(data)
            sentences.end_input()

        async def group() -> None:
            pending: list[str] = []
            async for ev in sentences:
                pending.append(ev.token)
                if len(pending) >= max(1, o.sentences_per_request):
                    chunks.put_nowait(" ".join(pending))
                    pending = []
            if pending:
                chunks.put_nowait(" ".join(pending))
            chunks.put_nowait(None)

        tasks = [asyncio.create_task(feed()), asyncio.create_task(group())]
        trimmer = _Trimmer(o.silence_level, o.trim_silence)
        started = False
        try:
            while (text := await chunks.get()) is not None:
                if not started:
                    output_emitter.start_segment(segment_id=request_id)
                    started = True
                self._mark_started()
                async for audio in self._speak(text):
                    out = trimmer.push(audio)
                    if out.size:
                        output_emitter.push(to_int16(out).tobytes())
            if started:
                output_emitter.end_segment()
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            await sentences.aclose()
            if o.trim_silence and started:
                self._orpheus._report_trim(trimmer.dropped / SAMPLE_RATE)

    async def _resolve(self, voice_model: str) -> str:
        """The base URL for a request: the resolver's (the router's node) or the fixed one."""
        o = self._orpheus.opts
        if o.resolver is None:
            assert o.base_url is not None
            return o.base_url
        try:
            return await o.resolver(voice_model)
        except LookupError as e:
            raise APIConnectionError(f"no speech node for {voice_model}: {e}") from e

    async def _speak(self, text: str) -> Any:
        """Audio for one request, window by window, as the tokens arrive."""
        o = self._orpheus.opts
        voice_model = o.model or o.voice
        base = await self._resolve(voice_model)
        body = {
            "model": voice_model, "prompt": prompt(o.voice, text), "max_tokens": o.max_tokens,
            "temperature": o.temperature, "top_p": o.top_p,
            "repetition_penalty": o.repetition_penalty, "stream": True, **o.extra_body,
        }  # fmt: skip
        headers = {"Authorization": f"Bearer {o.api_key}"} if o.api_key else {}
        parser = CodeParser()
        codes: list[int] = []
        frames: list[list[int]] = []
        emitted = 0  # frames whose audio is out
        loop = asyncio.get_running_loop()
        decode = self._orpheus.decoder
        S = SAMPLES_PER_FRAME
        resp = None
        for attempt in (1, 2):
            try:
                resp = await self._orpheus.http().post(
                    base.rstrip("/") + "/completions", json=body, headers=headers
                )
                break
            except aiohttp.ClientConnectorError as e:  # the node is gone: re-pin, once
                if attempt == 1 and isinstance(o.resolver, Repinning):
                    await o.resolver.unreachable(voice_model, base)
                    base = await self._resolve(voice_model)
                    continue
                raise APIConnectionError(f"speech server unreachable: {e}") from e
            except (aiohttp.ClientError, OSError) as e:
                raise APIConnectionError(f"speech server unreachable: {e}") from e
        assert resp is not None
        async with resp:
            if resp.status != 200:
                raise APIStatusError(
                    f"speech server answered {resp.status}", status_code=resp.status,
                    body=(await resp.text())[:500],
                )  # fmt: skip
            async for data in sse_data(resp.content):
                try:
                    piece = json.loads(data)["choices"][0].get("text") or ""
                except (ValueError, KeyError, IndexError, TypeError):
                    continue
                codes += parser.feed(piece)
                while len(codes) >= CODES_PER_FRAME:
                    frames.append(codes[:CODES_PER_FRAME])
                    codes = codes[CODES_PER_FRAME:]
                    k = len(frames)
                    if k >= WINDOW_FRAMES:
                        # a window's audio is final up to its second frame (right context)
                        w = k - WINDOW_FRAMES
                        audio = await loop.run_in_executor(_executor(), decode, frames[w:k])
                        yield audio[(emitted - w) * S : 2 * S]
                        emitted = k - 2
                if parser.ended:
                    break
        if len(frames) > emitted:  # the end: the last frames need no more context
            w = max(0, len(frames) - WINDOW_FRAMES)
            audio = await loop.run_in_executor(_executor(), decode, frames[w:])
            yield audio[(emitted - w) * S :]
        if parser.rejected:
            logger.debug("%d non-audio tokens ignored", parser.rejected)
