"""Batched Whisper decoding across concurrent streams, for the shared STT server.

Utterances from different callers that need decoding at about the same time (within
``max_wait`` seconds) are encoded and decoded as one batch: on a GPU a batch of eight costs
little more than one. A batch shares one encoder window, sized to its longest utterance
(:mod:`.decode`).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from faster_whisper import WhisperModel

from .decode import WindowedDecoder, heard
from .log import logger


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
        self._decoder = WindowedDecoder(model)

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
        texts = [heard(d) for d in self._decoder.decode(pcms, self.language)]
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
