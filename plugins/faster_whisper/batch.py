"""Batched Whisper decoding across concurrent streams, for the shared STT server.

Utterances from different callers that need decoding at about the same time (within
``max_wait`` seconds) are encoded and decoded as one batch: on a GPU a batch of eight costs
little more than one. Each item is padded to Whisper's 30 s window, as a single decode is.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from .log import logger

N_FRAMES = 3000  # 30 s of 10 ms mel frames


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)


class BatchDecoder:
    """``await transcribe(pcm)`` from any number of streams; decoding happens in batches."""

    def __init__(
        self, model: WhisperModel, language: str = "en", *, max_batch: int = 8,
        max_wait: float = 0.015,
    ) -> None:  # fmt: skip
        self.model = model
        self.language = language
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[str]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-batch")
        self._lock = threading.Lock()
        multilingual = bool(model.model.is_multilingual)
        self._tokenizer = Tokenizer(
            model.hf_tokenizer, multilingual, task="transcribe",
            language=language if multilingual else None,
        )  # fmt: skip

    async def transcribe(self, pcm: np.ndarray) -> str:
        """16 kHz float32 mono in, text out."""
        if pcm.size < 1600:
            return ""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._collect())
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((pcm.astype(np.float32), fut))
        return await fut

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            live = [(p, f) for p, f in items if not f.done()]
            if not live:
                continue
            try:
                texts = await loop.run_in_executor(
                    self._pool, self.decode_batch, [p for p, _ in live]
                )
            except Exception as e:  # one bad batch fails its callers, not the server
                logger.exception("batch decode failed")
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), text in zip(live, texts, strict=True):
                if not f.done():
                    f.set_result(text)

    def decode_batch(self, pcms: list[np.ndarray]) -> list[str]:
        """Blocking: encode and greedily decode several utterances together."""
        feats = []
        for pcm in pcms:
            f = self.model.feature_extractor(pcm[-30 * 16000 :])
            f = f[:, :N_FRAMES] if f.shape[1] >= N_FRAMES else np.pad(
                f, ((0, 0), (0, N_FRAMES - f.shape[1]))
            )  # fmt: skip
            feats.append(f)
        batch = np.stack(feats).astype(np.float32)
        encoded = self.model.encode(batch)
        tok = self._tokenizer
        prompt = [*tok.sot_sequence, tok.no_timestamps]
        results = self.model.model.generate(
            encoded, [prompt] * len(pcms), beam_size=1, max_length=224,
            suppress_blank=True, suppress_tokens=[-1], return_no_speech_prob=True,
        )  # fmt: skip
        texts = []
        for r in results:
            ids = [t for t in r.sequences_ids[0] if t < tok.eot]
            text = tok.decode(ids).strip()
            texts.append("" if r.no_speech_prob > 0.8 and len(ids) < 3 else text)
        with self._lock:
            self.stats.batches += 1
            self.stats.items += len(pcms)
            self.stats.largest = max(self.stats.largest, len(pcms))
            self.stats.sizes.append(len(pcms))
            del self.stats.sizes[:-1000]
        return texts

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
