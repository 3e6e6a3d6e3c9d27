"""faster-whisper as a streaming ``stt.STT``.

Whisper decodes whole utterances, so streaming is built around it: a Silero VAD splits the
caller's audio into utterances, the growing utterance is re-decoded at a bounded cadence for
interim transcripts (at most one decode in flight per stream), and the finished utterance is
decoded once more for the final transcript. That last decode starts at the first moment of
silence (``early_final`` seconds into it), not when the VAD closes the utterance: if the
caller stays silent it is the final, ready ~``min_silence`` sooner; if they go on, it is
dropped. Its words go out at once as a *preflight* transcript: with an end-of-turn model,
livekit-agents starts a speculative reply on preflight transcripts only (a final transcript
starts one only in VAD mode), so without them nothing was speculated after the first turn.
Input at any rate is resampled once to 16 kHz;
decoding runs on a thread pool shared by all calls, never on the event loop.

Whoever opens a stream can lean its spelling: a callable set in ``decode_prompt`` when the
stream is created is asked before each decode for text Whisper reads as what came before
(while its reply plays, the worker gives it short answers of both kinds, "Mm-hmm. ... Stop.
No.", so a short "mm-hmm" over the agent is written as one rather than "And then them.").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectOptions,
    stt,
    utils,
)
from livekit.agents import vad as agents_vad
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer

from ..audio import frames_to_float, resample_frames
from .batch import BatchDecoder
from .decode import Decoded, WindowedDecoder, heard
from .log import logger
from .models import WhisperOptions, load_model

SAMPLE_RATE = 16000
SPOKEN_TAIL_S = 0.1
"""A transcript's ``end_time`` is the VAD's padding and speech plus this much silence, the
moment the early final starts: the same measure the barge-in limits were tuned on."""

decode_prompt: ContextVar[Callable[[], str | None] | None] = ContextVar(
    "decode_prompt", default=None
)
"""Read once when a stream is created: called before each of its decodes for a prompt (or
``None``). A context variable because the framework, not the caller, opens the stream."""

_executor: ThreadPoolExecutor | None = None


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide decode pool (one per process, like the model)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")
    return _executor


@dataclass(frozen=True)
class Heard:
    text: str
    confidence: float
    """exp(mean token log-probability): Whisper's own sureness of the words."""


@dataclass
class _Utterance:
    id: str
    chunks: list[np.ndarray]
    samples: int = 0
    decoded_samples: int = 0
    finalising: bool = False
    early: asyncio.Task[Heard] | None = None
    """The decode started at the first silence; dropped when the caller goes on."""
    preflighted: bool = False
    voiced_samples: int = 0
    """Samples up to the end of the last window the VAD heard speech in."""


class STT(stt.STT):
    """Whisper via faster-whisper, with streaming built on a VAD."""

    def __init__(
        self,
        *,
        opts: WhisperOptions,
        vad: agents_vad.VAD | None = None,
        interim_interval: float = 0.6,
        min_silence: float = 0.35,
        early_final: float = 0.03,
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=True, offline_recognize=True
            )
        )
        self._opts = opts
        self._model = load_model(opts)
        self._decoder = WindowedDecoder(self._model, beam_size=opts.beam_size)
        self._pool = _pool(opts.num_workers)
        self._interim_interval = max(0.2, interim_interval)
        self._early_final = early_final
        self.early_finals = 0
        """Finals taken from the decode started at the first silence (tests read it)."""
        self.early_dropped = 0
        """Decodes started at a silence the caller then spoke through."""
        if vad is None:
            from livekit.plugins import silero

            vad = silero.VAD.load(min_silence_duration=min_silence, prefix_padding_duration=0.3)
        self._vad = vad

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return "faster-whisper"

    @property
    def whisper(self) -> Any:
        """The loaded faster-whisper model (the shared server batches decodes on it)."""
        return self._model

    @property
    def language(self) -> str:
        """The language decoded unless a request names another."""
        return self._opts.language

    def decode_pcm(
        self, pcm: np.ndarray, language: str | None = None, prompt: str | None = None
    ) -> Decoded | None:
        """Decode 16 kHz mono float32 samples; blocking, so call it off the event loop.
        ``None`` for audio too short to hold a word."""
        if pcm.size < SAMPLE_RATE // 10:
            return None
        return self._decoder.decode([pcm], language or self._opts.language, prompt=prompt)[0]

    def transcribe_pcm(self, pcm: np.ndarray, language: str | None = None) -> str:
        """The words in 16 kHz mono float32 samples, or "" for none; blocking."""
        return heard(self.decode_pcm(pcm, language))

    batcher: BatchDecoder | None = None
    """When set (the shared STT server), decodes go through it in cross-stream batches."""

    async def transcribe_async(self, pcm: np.ndarray, language: str | None = None) -> str:
        return (await self.hear_async(pcm, language)).text

    async def hear_async(
        self, pcm: np.ndarray, language: str | None = None, prompt: str | None = None
    ) -> Heard:
        """The words and the model's confidence in them (1.0 through the batcher, which
        keeps only the words and takes no prompt), decoded off the event loop."""
        if self.batcher is not None and (language or self._opts.language) == self.batcher.language:
            return Heard(await self.batcher.transcribe(pcm), 1.0)
        loop = asyncio.get_running_loop()
        d = await loop.run_in_executor(self._pool, self.decode_pcm, pcm, language, prompt)
        return Heard(heard(d), d.confidence if d is not None else 0.0)

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frames = buffer if isinstance(buffer, list) else [buffer]
        pcm = frames_to_float(resample_frames(frames, SAMPLE_RATE))
        lang = language if utils.is_given(language) else self._opts.language
        text = await self.transcribe_async(pcm, lang)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex,
            alternatives=[stt.SpeechData(language=LanguageCode(lang), text=text, confidence=1.0)],
        )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        lang = language if utils.is_given(language) else self._opts.language
        return SpeechStream(stt=self, conn_options=conn_options, language=lang)


class SpeechStream(stt.RecognizeStream):
    """One caller's audio in, interim and final transcripts out."""

    def __init__(self, *, stt: STT, conn_options: APIConnectOptions, language: str) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._whisper = stt
        self._language = language
        self._utt: _Utterance | None = None
        self._final_lock = asyncio.Lock()
        self._prompt = decode_prompt.get()

    def _hear(self, pcm: np.ndarray) -> asyncio.Task[Heard]:
        """Decode one utterance, with the opener's prompt as it stands now."""
        prompt = self._prompt() if self._prompt is not None else None
        return asyncio.create_task(self._whisper.hear_async(pcm, self._language, prompt))

    def _emit(self, kind: stt.SpeechEventType, utt: _Utterance, words: Heard | None = None) -> None:
        """An event of ``utt``; transcripts carry Whisper's confidence and, as ``end_time``,
        the seconds of audio the words came from (VAD padding included), which the agent's
        barge-in policy weighs with the words."""
        alts = (
            [
                stt.SpeechData(
                    language=LanguageCode(self._language), text=words.text,
                    confidence=words.confidence, start_time=0.0,
                    end_time=utt.voiced_samples / SAMPLE_RATE + SPOKEN_TAIL_S,
                )
            ]
            if words is not None and words.text
            else []
        )  # fmt: skip
        self._event_ch.send_nowait(stt.SpeechEvent(type=kind, request_id=utt.id, alternatives=alts))

    async def _run(self) -> None:
        vad_stream = self._whisper._vad.stream()
        tasks: set[asyncio.Task[Any]] = set()

        async def finalise(utt: _Utterance, pcm: np.ndarray) -> None:
            async with self._final_lock:  # finals leave in utterance order
                started = time.perf_counter()
                if utt.early is not None:
                    self._whisper.early_finals += 1
                    words = await utt.early
                else:
                    words = await self._hear(pcm)
                logger.debug(
                    "final in %.0f ms: %r", (time.perf_counter() - started) * 1e3, words.text
                )
                if words.text:
                    if not utt.preflighted:  # the speculative reply starts on a preflight
                        self._emit(stt.SpeechEventType.PREFLIGHT_TRANSCRIPT, utt, words)
                    self._emit(stt.SpeechEventType.FINAL_TRANSCRIPT, utt, words)
                self._event_ch.send_nowait(
                    stt.SpeechEvent(
                        type=stt.SpeechEventType.RECOGNITION_USAGE,
                        request_id=utt.id,
                        recognition_usage=stt.RecognitionUsage(
                            audio_duration=pcm.size / SAMPLE_RATE
                        ),
                    )
                )
                self._emit(stt.SpeechEventType.END_OF_SPEECH, utt)

        def early_decode(utt: _Utterance, ev: agents_vad.VADEvent) -> None:
            early_at = self._whisper._early_final
            if early_at <= 0 or not ev.speaking:
                return
            if ev.raw_accumulated_silence < early_at:
                if ev.raw_accumulated_silence == 0.0 and utt.early is not None:
                    utt.early = None  # the caller went on: that decode is stale
                    self._whisper.early_dropped += 1
                return
            if utt.early is None:
                utt.decoded_samples = utt.samples  # no interim for the same audio
                pcm = np.concatenate(utt.chunks)
                utt.early = self._hear(pcm)
                early = utt.early

                def preflight(t: asyncio.Task[Heard]) -> None:
                    # still the caller's last words: no speech since, the final not yet out
                    if t.cancelled() or t.exception() is not None or not t.result().text:
                        return
                    if utt.early is early and not utt.finalising and self._utt is utt:
                        utt.preflighted = True
                        self._emit(stt.SpeechEventType.PREFLIGHT_TRANSCRIPT, utt, t.result())

                utt.early.add_done_callback(preflight)
                tasks.add(utt.early)
                utt.early.add_done_callback(tasks.discard)
                # a dropped decode's error is nobody's: read it so it is not reported unread
                utt.early.add_done_callback(lambda t: t.cancelled() or t.exception())

        async def on_vad() -> None:
            async for ev in vad_stream:
                if ev.type == agents_vad.VADEventType.START_OF_SPEECH:
                    head = frames_to_float(ev.frames)
                    self._utt = _Utterance(
                        id=uuid.uuid4().hex[:12], chunks=[head], samples=head.size
                    )
                    self._emit(stt.SpeechEventType.START_OF_SPEECH, self._utt)
                elif ev.type == agents_vad.VADEventType.INFERENCE_DONE and self._utt is not None:
                    # the utterance is built from the windows the VAD judged, so it has no
                    # gap however far the VAD lags behind the input
                    chunk = frames_to_float(ev.frames)
                    self._utt.chunks.append(chunk)
                    self._utt.samples += chunk.size
                    if ev.raw_accumulated_silence == 0.0:
                        self._utt.voiced_samples = self._utt.samples
                    early_decode(self._utt, ev)
                elif ev.type == agents_vad.VADEventType.END_OF_SPEECH and self._utt is not None:
                    utt, self._utt = self._utt, None
                    utt.finalising = True
                    pcm = frames_to_float(ev.frames) if ev.frames else np.concatenate(utt.chunks)
                    t = asyncio.create_task(finalise(utt, pcm))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)

        async def interims() -> None:
            step = int(self._whisper._interim_interval * SAMPLE_RATE)
            while True:
                await asyncio.sleep(self._whisper._interim_interval)
                utt = self._utt
                if utt is None or utt.samples - utt.decoded_samples < step:
                    continue
                utt.decoded_samples = utt.samples
                pcm = np.concatenate(utt.chunks)[-30 * SAMPLE_RATE :]
                words = await self._hear(pcm)
                # not once the silence has started the early final: that decode covers the
                # same audio and more and is moments away, and the caller has stopped, so
                # nobody should act on these words any more (the agent reads the LLM prompt
                # ahead on interims; one sent now would race the reply's own request)
                if words.text and not utt.finalising and self._utt is utt and utt.early is None:
                    self._emit(stt.SpeechEventType.INTERIM_TRANSCRIPT, utt, words)

        vad_task = asyncio.create_task(on_vad())
        interim_task = asyncio.create_task(interims())
        try:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    continue
                vad_stream.push_frame(item)
            vad_stream.end_input()
            await vad_task
            if self._utt is not None:  # input ended mid-utterance
                utt, self._utt = self._utt, None
                utt.finalising = True
                await finalise(utt, np.concatenate(utt.chunks))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await utils.aio.cancel_and_wait(interim_task, vad_task, *tasks)
            await vad_stream.aclose()
