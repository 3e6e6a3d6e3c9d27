"""The browser transport for embedded local mode: one WebRTC peer connection per call (aiortc).

The browser sends its microphone as Opus; frames are mixed to mono and handed to the session
untouched (the STT and VAD resample once each to their own rate). The agent's audio leaves at
24 kHz, paced by the outgoing track in 20 ms frames. A data channel carries live transcripts
and state to the page, and a ``hangup`` message from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from plugins.audio import DTMF_DIGITS, make_frame, mono
from telephony import wire
from telephony.call import Call

logger = logging.getLogger("worker.local.webrtc")

OUT_RATE = 24000
FRAME_MS = 20
MEDIA_TIMEOUT_S = 10.0
"""A browser sends audio continuously; this long without any means the page is gone."""


AUDIO_PREFETCH = 1
"""Received audio frames aiortc holds before decoding the oldest. Its default, 4, holds every
20 ms Opus frame until four later ones have arrived: 80 ms added to every caller word and to
every barge-in. One frame is the least its jitter buffer can hold (a frame counts as complete
when the next one arrives); a lost packet stalls it the same either way, until the 16-packet
buffer overflows."""


def shorten_audio_jitter_buffer(receiver: RTCRtpReceiver) -> bool:
    """Give an audio receiver a jitter buffer that holds ``AUDIO_PREFETCH`` frames.

    aiortc has no setting for this; its receiver builds the buffer in ``__init__``. This is
    the one place that reaches into it (pinned by ``test_local_server.py``); if aiortc
    renames it, calls keep its default and a warning says so. Returns whether it applied."""
    if getattr(receiver, "_RTCRtpReceiver__kind", None) != "audio":
        return False
    if not isinstance(getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None), JitterBuffer):
        logger.warning("aiortc's receiver changed: its 80 ms audio jitter buffer stays")
        return False
    receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(  # type: ignore[attr-defined]
        capacity=16, prefetch=AUDIO_PREFETCH
    )
    return True


class OfferError(ValueError):
    """An SDP offer we cannot accept; the message is returned to the client."""


class _AgentTrack(MediaStreamTrack):
    """The agent's voice, pulled from the call's paced output in real time."""

    kind = "audio"

    def __init__(self, call: WebRTCCall) -> None:
        super().__init__()
        self._call = call
        self._samples = OUT_RATE * FRAME_MS // 1000
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self._samples
            wait = self._start + self._pts / OUT_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # we fell behind (a stalled loop): resynchronise, don't burst
                self._start = time.monotonic() - self._pts / OUT_RATE
        samples = self._call.audio_output.read(self._samples)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, OUT_RATE)
        return frame


class WebRTCCall(Call):
    """A browser caller on the local page."""

    transport = "local-web"

    def __init__(self, call_id: str, ice_servers: list[RTCIceServer] | None = None) -> None:
        super().__init__(call_id, output_rate=OUT_RATE, caller="browser")
        # An explicit list, empty by default: aiortc's own default is a public STUN server,
        # which would make every call look up and contact a host on the internet.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self._channel: RTCDataChannel | None = None
        self._pump: asyncio.Task[None] | None = None
        self.on_event = self._send_event

        @self.pc.on("datachannel")
        def _on_channel(channel: RTCDataChannel) -> None:
            self._channel = channel

            @channel.on("message")
            def _on_message(message: Any) -> None:
                self._on_client_message(message)

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            state = self.pc.connectionState
            logger.info("call %s: peer connection %s", self.call_id, state)
            if state in ("failed", "closed"):
                self.mark_ended("caller_disconnected" if state == "closed" else "connection_failed")

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._pump is None:
                self._pump = asyncio.create_task(self._pump_audio(track))

    def _on_client_message(self, message: Any) -> None:
        if not isinstance(message, str):
            return
        try:
            msg = wire.load_json(message, "data channel message")
        except wire.WireError:
            return
        if isinstance(msg, dict) and msg.get("type") == "hangup":
            self.mark_ended("caller_hangup")
        elif (
            isinstance(msg, dict)
            and msg.get("type") == "dtmf"
            and isinstance(msg.get("digit"), str)
        ):
            digit = msg["digit"]
            if len(digit) == 1 and digit in DTMF_DIGITS:
                self.dtmf_received(digit)

    def _send_event(self, event: dict[str, object]) -> None:
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            with contextlib.suppress(Exception):
                ch.send(json.dumps(event))

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """Accept the browser's offer and return our answer (ICE gathered, no trickle)."""
        if kind != "offer":
            raise OfferError(f"expected an SDP of type 'offer', got {kind!r}")
        if "m=audio" not in sdp:
            raise OfferError("the offer has no audio media section")
        for need in ("a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"):
            if need not in sdp:  # aiortc would accept it and fail later, out of our hands
                raise OfferError(f"the offer has no {need[2:-1]} (WebRTC needs DTLS and ICE)")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            for receiver in self.pc.getReceivers():  # before the first packet can arrive
                shorten_audio_jitter_buffer(receiver)
            self.pc.addTrack(_AgentTrack(self))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as e:  # aiortc raises ValueError, AttributeError... on odd offers
            raise OfferError(f"invalid SDP offer: {type(e).__name__}: {e}"[:200]) from e
        return self.pc.localDescription

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        """Browser audio into the session, as mono 16-bit frames at the browser's rate."""
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), MEDIA_TIMEOUT_S)
                except TimeoutError:
                    logger.info("call %s: no audio for %.0fs", self.call_id, MEDIA_TIMEOUT_S)
                    self.mark_ended("media_timeout")
                    return
                if not isinstance(frame, av.AudioFrame):
                    continue
                arr = frame.to_ndarray()
                channels = len(frame.layout.channels)
                if arr.dtype != np.int16:
                    arr = np.clip(arr, -32768, 32767).astype(np.int16)
                # planar: one row per channel; packed: the channels interleaved in one row
                pcm = mono(arr.T.reshape(-1) if frame.format.is_planar else arr.reshape(-1),
                           channels)  # fmt: skip
                self.audio_input.push(make_frame(pcm, frame.sample_rate))
        except MediaStreamError:
            self.mark_ended("caller_disconnected")
        except asyncio.CancelledError:
            raise

    async def close(self) -> None:
        self.mark_ended(self.end_reason)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        await self.pc.close()
