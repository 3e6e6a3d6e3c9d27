"""The streaming STT as a client of the shared STT server (``plugins.faster_whisper.server``).

Used instead of the in-process model when ``stt.server_url`` is set: caller audio goes to the
server over a WebSocket (resampled once to 16 kHz here) and its events come back as the same
``SpeechEvent``s the in-process recogniser emits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from urllib.parse import urlencode

import aiohttp
import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    stt,
    utils,
)
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer

from ..audio import frames_to_float, resample_frames
from ..http import LoopSessions
from .stt import SAMPLE_RATE

_EVENTS = {
    "start_of_speech": stt.SpeechEventType.START_OF_SPEECH,
    "interim": stt.SpeechEventType.INTERIM_TRANSCRIPT,
    "preflight": stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
    "final": stt.SpeechEventType.FINAL_TRANSCRIPT,
    "end_of_speech": stt.SpeechEventType.END_OF_SPEECH,
}


class RemoteSTT(stt.STT):
    def __init__(self, *, url: str, language: str = "en") -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=True, offline_recognize=True
            )
        )
        self.url = url.rstrip("/")
        self.language = language
        self._http = LoopSessions()  # the streams wait on speech as long as it lasts

    @property
    def model(self) -> str:
        return "faster-whisper-server"

    @property
    def provider(self) -> str:
        return self.url

    def http(self) -> aiohttp.ClientSession:
        return self._http.get()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def transcribe_async(self, pcm: np.ndarray, language: str | None = None) -> str:
        """One utterance (16 kHz float32) through the server's one-shot endpoint."""
        data = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        try:
            async with self.http().post(f"{self.url}/v1/transcribe", data=data) as resp:
                body = await resp.json()
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise APIConnectionError(f"STT server unreachable at {self.url}: {e}") from e
        if "text" not in body:
            raise APIConnectionError(f"STT server: {body.get('error')}")
        return str(body["text"])

    async def _recognize_impl(
        self, buffer: AudioBuffer, *, language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:  # fmt: skip
        frames = buffer if isinstance(buffer, list) else [buffer]
        text = await self.transcribe_async(frames_to_float(resample_frames(frames, SAMPLE_RATE)))
        lang = language if utils.is_given(language) else self.language
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language=LanguageCode(lang), text=text)],
        )

    def stream(
        self, *, language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> RemoteStream:  # fmt: skip
        lang = language if utils.is_given(language) else self.language
        return RemoteStream(stt=self, conn_options=conn_options, language=lang)


class RemoteStream(stt.RecognizeStream):
    def __init__(self, *, stt: RemoteSTT, conn_options: APIConnectOptions, language: str) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._remote = stt
        self._language = language

    async def _run(self) -> None:
        q = urlencode({"sample_rate": SAMPLE_RATE, "language": self._language})
        url = f"{self._remote.url}/v1/listen?{q}"
        try:
            ws = await self._remote.http().ws_connect(url, heartbeat=30)
        except (aiohttp.ClientError, OSError) as e:
            raise APIConnectionError(f"STT server unreachable at {url}: {e}") from e

        async def send() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    continue
                await ws.send_bytes(bytes(item.data))
            await ws.send_str(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                ev = json.loads(msg.data)
                kind = _EVENTS.get(ev.get("type"))
                if kind is None:
                    continue
                alts = (
                    [stt.SpeechData(language=LanguageCode(self._language), text=ev["text"])]
                    if ev.get("text") else []
                )  # fmt: skip
                self._event_ch.send_nowait(
                    stt.SpeechEvent(type=kind, request_id=ev.get("id", ""), alternatives=alts)
                )
            if ws.close_code not in (None, 1000) and not sender.done():
                raise APIConnectionError(f"STT server closed the stream ({ws.close_code})")
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            await ws.close()
