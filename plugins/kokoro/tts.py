"""Kokoro-82M as a streaming ``tts.TTS``.

Text arrives token by token from the LLM; it is cut into sentences, long sentences into
clauses, and each piece is synthesised on a worker thread as soon as it is complete, so the
first sentence's audio goes out while the LLM is still writing the rest. Pieces are short so
that an interrupted reply stops after at most one piece of wasted work.

Short pieces are kept once made (:class:`PieceCache`): a reply's opening piece is most often
a stock phrase ("Sure,", "I'm sorry,", "You're welcome!"), and Kokoro makes the same audio
for the same text, voice and speed every time, so an opener heard before plays at once
instead of after ~0.4 s of synthesis on two cores. The worker fills the cache at load with
the openers its prompt teaches the LLM.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectOptions,
    tokenize,
    tts,
)

from ..audio import start_pcm_stream
from ..http import LoopSessions
from ..lk_private import synthesize_with_stream
from .log import logger
from .models import KokoroOptions, load_kokoro

SAMPLE_RATE = 24000
PAUSE_AFTER_PIECE = 0.12
MAX_PIECE_WORDS = 12
FIRST_PIECE_WORDS = 4
"""The reply's first piece is kept short: its synthesis, and the tokens the LLM must write
before it can start, are what the caller waits for (on 2 cores, 6 words cost ~0.15 s more to
synthesise than 4, and the two words' look-ahead ~0.2 s more of writing)."""
_WEAK_END = frozenset(
    "a an the to of and or for at in on with my your our their his her its is are was "
    "be i we you they it that this from by as but so if than about into has have had will "
    "can would could should do does did not very".split()
)
"""Words a spoken phrase does not end on: a first piece cut after one sounds broken off."""

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One synthesis thread per process: onnxruntime already uses every core per run."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kokoro")
    return _executor


class PieceCache:
    """Audio of short pieces already synthesised, by voice, speed and text (least recently
    used first out). Pieces longer than ``max_words`` are rarely said twice and not kept."""

    def __init__(self, max_entries: int = 256, max_words: int = FIRST_PIECE_WORDS + 2) -> None:
        self.max_entries = max_entries
        self.max_words = max_words
        self._audio: OrderedDict[tuple[str, float, str], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def keeps(self, text: str) -> bool:
        return self.max_entries > 0 and 0 < len(text.split()) <= self.max_words

    def get(self, voice: str, speed: float, text: str) -> np.ndarray | None:
        if not self.keeps(text):
            return None
        pcm = self._audio.get((voice, speed, text))
        if pcm is None:
            self.misses += 1
            return None
        self._audio.move_to_end((voice, speed, text))
        self.hits += 1
        return pcm

    def put(self, voice: str, speed: float, text: str, pcm: np.ndarray) -> None:
        if not self.keeps(text) or not pcm.size:
            return
        self._audio[(voice, speed, text)] = pcm
        self._audio.move_to_end((voice, speed, text))
        while len(self._audio) > self.max_entries:
            self._audio.popitem(last=False)

    def __contains__(self, key: tuple[str, float, str]) -> bool:
        return key in self._audio

    def __len__(self) -> int:
        return len(self._audio)


SPEED_RANGE = (0.5, 2.0)
"""Speaking rates Kokoro sounds natural at (1.0 is its own pace)."""


class UnknownVoiceError(ValueError):
    """A voice name the loaded voice table does not have."""


_CLAUSE_BREAK = re.compile(r"(?<=[,;:])\s+")


_HEAD_END = re.compile(r"[,;:.!?](?=\s|$)")
_ABBREVIATION = frozenset("mr mrs ms dr st jr sr no vs etc approx".split())


def _mark_ends_phrase(text: str, at: int) -> bool:
    """Whether the mark at ``at`` ends a phrase. Followed by a space it does; at the very end
    of what the LLM has written so far it does too (the reply starts a token sooner), unless
    the next token may still continue it: a number ("1,500", "3.5") or an abbreviation
    ("Dr.")."""
    if at + 1 < len(text):
        return True
    before = text[:at]
    if before[-1:].isdigit():
        return False
    if text[at] == "." and before.split()[-1:] and before.split()[-1].lower() in _ABBREVIATION:
        return False
    return True


def early_cut(text: str, max_words: int = FIRST_PIECE_WORDS) -> int | None:
    """Where the reply's opening piece can end, as soon as the LLM has written it.

    At the first clause or sentence mark within ``max_words + 1`` words, as soon as the mark is
    written; otherwise after ``max_words`` complete words once one more has come (one more
    again when the cut would end on a word like "the" or "to"); ``None`` while it is too early
    to tell.
    """
    m = next((m for m in _HEAD_END.finditer(text) if _mark_ends_phrase(text, m.start())), None)
    if m is not None and len(text[: m.start()].split()) <= max_words + 1:
        return m.end()
    words = list(re.finditer(r"\S+(?=\s)", text))
    n = max_words
    while n < len(words) and words[n - 1].group().lower().strip("'\"") in _WEAK_END:
        n += 1
    if len(words) > n and n <= max_words + 2:
        return words[n - 1].end()
    if len(words) > max_words + 2:
        return words[max_words + 1].end()
    return None


def split_pieces(sentence: str, max_words: int = MAX_PIECE_WORDS) -> list[str]:
    """Split a long sentence at clause marks into pieces of about ``max_words`` words."""
    if len(sentence.split()) <= max_words:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for clause in _CLAUSE_BREAK.split(sentence):
        candidate = f"{current} {clause}".strip()
        if current and len(candidate.split()) > max_words:
            pieces.append(current)
            current = clause
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


class TTS(tts.TTS):
    """Kokoro-82M, 24 kHz mono, sentence-streamed."""

    def __init__(self, *, opts: KokoroOptions) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )
        self._opts = opts
        self._kokoro = load_kokoro(opts.model_path, opts.voices_path, opts.threads)
        voices = self.voices
        if opts.voice not in voices:
            raise UnknownVoiceError(
                f"unknown Kokoro voice {opts.voice!r}; valid voices: {', '.join(voices)}"
            )
        if not SPEED_RANGE[0] <= opts.speed <= SPEED_RANGE[1]:
            raise ValueError(f"Kokoro speed must be within {SPEED_RANGE}, got {opts.speed}")
        self._sentences = tokenize.blingfire.SentenceTokenizer(min_sentence_len=8)
        self.pieces = PieceCache()
        self.openings = [0, 0]
        """Replies begun, and how many of them with a piece from the cache (benchmarks)."""
        self._failing = False
        """The last synthesis failed: no cached piece is served until one works."""

    @property
    def voice(self) -> str:
        """The voice a request speaks in unless it names another."""
        return self._opts.voice

    def pieces_of(self, text: str) -> list[str]:
        """The pieces ``text`` is synthesised in: sentences, long ones split at clauses."""
        return [p for s in self._sentences.tokenize(text) for p in split_pieces(s)] or [text]

    @property
    def voices(self) -> list[str]:
        voices: Any = self._kokoro.voices  # an NpzFile, typed as an array upstream
        return sorted(voices.files)

    @property
    def model(self) -> str:
        return "kokoro-82m"

    @property
    def provider(self) -> str:
        return "kokoro-onnx"

    def synthesize_pcm(
        self, text: str, voice: str | None = None, speed: float | None = None
    ) -> np.ndarray:
        """Blocking: int16 samples for one piece of text, followed by a short pause."""
        text = text.strip()
        if not any(c.isalnum() for c in text):
            return np.zeros(0, dtype=np.int16)
        audio, _ = self._kokoro.create(
            text, voice=voice or self._opts.voice, speed=speed or self._opts.speed,
            lang=self._opts.lang,
        )  # fmt: skip
        # a piece split mid-phrase runs straight on; one that ends a clause or sentence breathes
        gap = PAUSE_AFTER_PIECE if text[-1] in ".!?,;:" else 0.0
        pause = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)
        full = np.concatenate([np.asarray(audio, dtype=np.float32), pause])
        return (np.clip(full, -1.0, 1.0) * 32767).astype(np.int16)

    async def synthesize_async(
        self, text: str, voice: str | None = None, speed: float | None = None
    ) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_pool(), self.synthesize_pcm, text, voice, speed)

    async def piece_audio(self, text: str, *, opening: bool = False) -> np.ndarray:
        """A reply piece's samples: from the piece cache when this voice said it before.

        Not while synthesis is failing: a cached opener played before the next piece fails
        would leave the caller a lone "Sure," (the fallback TTS does not take over a segment
        that has audio). Failing from its first piece, the reply goes whole to the fallback.
        """
        voice, speed = self._opts.voice, self._opts.speed
        pcm = None if self._failing else self.pieces.get(voice, speed, text)
        if opening:
            self.openings[0] += 1
            self.openings[1] += pcm is not None
        if pcm is None:
            try:
                pcm = await self.synthesize_async(text)
            except Exception:
                self._failing = True
                raise
            self._failing = False
            self.pieces.put(voice, speed, text, pcm)
        return pcm

    async def prepare_pieces(self, texts: Iterable[str]) -> int:
        """Synthesise the short pieces not yet cached (a reply's likely openers); how many."""
        made = 0
        for text in texts:
            text = text.strip()
            key = (self._opts.voice, self._opts.speed, text)
            if self.pieces.keeps(text) and key not in self.pieces:
                self.pieces.put(*key, await self.synthesize_async(text))
                made += 1
        return made

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return synthesize_with_stream(self, text, conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        return SynthesizeStream(tts=self, conn_options=conn_options)


class SynthesizeStream(tts.SynthesizeStream):
    """Text in as it is generated, audio out piece by piece."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._kokoro_tts = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = start_pcm_stream(output_emitter, SAMPLE_RATE)
        sentences = self._kokoro_tts._sentences.stream()
        # pieces to speak, in order: the early head of the reply, then sentence pieces
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        async def feed() -> None:
            head: str | None = ""
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    sentences.flush()
                    continue
                if head is None:
                    sentences.push_text(data)
                    continue
                head += data
                cut = early_cut(head)
                if cut:
                    pieces.put_nowait(head[:cut].strip())
                    sentences.push_text(head[cut:])
                    head = None
            if head:
                sentences.push_text(head)
            sentences.end_input()

        async def split() -> None:
            async for ev in sentences:
                for piece in split_pieces(ev.token):
                    pieces.put_nowait(piece)
            pieces.put_nowait(None)

        feed_task = asyncio.create_task(feed())
        split_task = asyncio.create_task(split())
        segment_open = False
        try:
            while (piece := await pieces.get()) is not None:
                opening = not segment_open
                if not segment_open:
                    output_emitter.start_segment(segment_id=request_id)
                    segment_open = True
                self._mark_started()
                pcm = await self._kokoro_tts.piece_audio(piece, opening=opening)
                if pcm.size:
                    output_emitter.push(pcm.tobytes())
            if segment_open:
                output_emitter.end_segment()
            await feed_task
        except asyncio.CancelledError:
            logger.debug("synthesis %s cancelled", request_id)
            raise
        finally:
            for task in (feed_task, split_task):
                if not task.done():
                    task.cancel()
            await sentences.aclose()


class RemoteTTS(TTS):
    """The same streaming TTS, synthesising each piece on a shared Kokoro server
    (``plugins.kokoro.server``) instead of in this process."""

    def __init__(self, *, url: str, voice: str = "af_heart", speed: float = 1.0) -> None:
        tts.TTS.__init__(
            self, capabilities=tts.TTSCapabilities(streaming=True), sample_rate=SAMPLE_RATE,
            num_channels=1,
        )  # fmt: skip
        self.url = url.rstrip("/")
        self._opts = KokoroOptions(model_path="", voices_path="", voice=voice, speed=speed)
        self._sentences = tokenize.blingfire.SentenceTokenizer(min_sentence_len=8)
        self.pieces = PieceCache()
        self.openings = [0, 0]
        self._failing = False
        self._http = LoopSessions(read_timeout=30.0)  # a piece takes well under a second

    @property
    def voices(self) -> list[str]:
        raise NotImplementedError("ask the server: GET /v1/audio/voices")

    @property
    def provider(self) -> str:
        return self.url

    async def synthesize_async(
        self, text: str, voice: str | None = None, speed: float | None = None
    ) -> np.ndarray:
        import aiohttp
        from livekit.agents import APIConnectionError, APIStatusError

        if not any(c.isalnum() for c in text):
            return np.zeros(0, dtype=np.int16)
        body = {"input": text, "voice": voice or self._opts.voice,
                "speed": speed or self._opts.speed, "response_format": "pcm"}  # fmt: skip
        try:
            async with self._http.get().post(f"{self.url}/v1/audio/speech", json=body) as resp:
                if resp.status != 200:
                    raise APIStatusError(
                        f"Kokoro server: {(await resp.text())[:300]}", status_code=resp.status
                    )
                data = await resp.read()
        except aiohttp.ClientError as e:
            raise APIConnectionError(f"Kokoro server unreachable at {self.url}: {e}") from e
        return np.frombuffer(data[: len(data) // 2 * 2], dtype=np.int16)

    async def aclose(self) -> None:
        await self._http.aclose()
