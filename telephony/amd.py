"""Answering-machine detection for outbound calls, from the first seconds of the callee's audio.

People answer with a short "Hello?" and then wait; machines play a long uninterrupted
greeting and end it with a beep. The detector works on 20 ms frames as they arrive:

- a steady pure tone (one frequency holding most of the energy for 160 ms) is a beep:
  machine, and the message can start as soon as the beep ends;
- speech running past ``machine_greeting`` seconds (pauses shorter than ``silence`` joined)
  is a recorded greeting: machine (then wait for the beep, or for silence, before speaking);
- speech of at most ``human_greeting`` seconds followed by ``silence`` seconds of quiet is a
  person waiting for an answer: human;
- a transcript with voicemail phrases ("leave a message", "after the tone") is a machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

FRAME_S = 0.02
VOICEMAIL_CUES = re.compile(
    r"leave (me |us )?(a |your )?(message|name)|after the (tone|beep)|not available|"
    r"voice ?mail|mailbox|can'?t (take|come to) (your|the) (call|phone)|record your message",
    re.I,
)


@dataclass
class AmdResult:
    kind: Literal["human", "machine", "unknown"]
    reason: str
    greeting_s: float
    """Length of the callee's opening speech so far."""
    beep_at: float | None = None
    """Seconds into the call where a beep ended, if one was heard."""


class AnsweringMachineDetector:
    """Streaming detector; :meth:`push` returns a result once it has decided."""

    def __init__(
        self,
        rate: int,
        *,
        human_greeting: float = 2.0,
        machine_greeting: float = 3.5,
        silence: float = 0.8,
        max_wait: float = 10.0,
        speech_dbfs: float = -40.0,
    ) -> None:
        self.rate = rate
        self.n = int(rate * FRAME_S)
        self.human_greeting = human_greeting
        self.machine_greeting = machine_greeting
        self.silence = silence
        self.max_wait = max_wait
        self.speech_dbfs = speech_dbfs
        self._buf = np.zeros(0, dtype=np.int16)
        self._t = 0.0
        self._speech_start: float | None = None
        self._last_speech: float | None = None
        self._tone_freq: float | None = None
        self._tone_frames = 0
        self._beep_end: float | None = None
        self.result: AmdResult | None = None
        self.beep_heard = False

    @property
    def greeting_s(self) -> float:
        if self._speech_start is None or self._last_speech is None:
            return 0.0
        return self._last_speech - self._speech_start

    def push(self, pcm: np.ndarray) -> AmdResult | None:
        """Feed int16 mono audio; returns the decision once made (and keeps it)."""
        self._buf = np.concatenate([self._buf, pcm.astype(np.int16)])
        while self._buf.size >= self.n and self.result is None:
            frame, self._buf = self._buf[: self.n], self._buf[self.n :]
            self._frame(frame.astype(np.float64) / 32768.0)
        return self.result

    def transcript(self, text: str) -> AmdResult | None:
        """Words heard so far; voicemail phrases decide for a machine."""
        if self.result is None and VOICEMAIL_CUES.search(text):
            self.result = AmdResult("machine", "voicemail phrase", self.greeting_s)
        return self.result

    def _frame(self, x: np.ndarray) -> None:
        self._t += FRAME_S
        rms = float(np.sqrt(np.mean(x**2))) + 1e-12
        loud = 20 * np.log10(rms) > self.speech_dbfs
        if loud and self._is_tone(x):
            self._tone_frames += 1
        else:
            if self._tone_frames >= 8:  # 160 ms of one steady tone: a beep that just ended
                self.beep_heard = True
                self._beep_end = self._t
                self.result = AmdResult("machine", "beep", self.greeting_s, beep_at=self._t)
                return
            self._tone_frames = 0
            self._tone_freq = None
        if loud and self._tone_frames == 0:
            if self._speech_start is None:
                self._speech_start = self._t
            self._last_speech = self._t
        greeting = self.greeting_s
        if greeting >= self.machine_greeting:
            self.result = AmdResult("machine", "long greeting", greeting)
        elif (
            self._last_speech is not None
            and self._t - self._last_speech >= self.silence
            and 0.1 <= greeting <= self.human_greeting
        ):
            self.result = AmdResult("human", "short greeting, then waiting", greeting)
        elif self._t >= self.max_wait:
            self.result = AmdResult("unknown", "no decision in time", greeting)

    def _is_tone(self, x: np.ndarray) -> bool:
        spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / self.rate)
        band = (freqs >= 300) & (freqs <= 3000)
        if not band.any():
            return False
        k = int(np.argmax(np.where(band, spec, 0)))
        peak = float(spec[max(0, k - 2) : k + 3].sum())
        if peak / (float(spec.sum()) + 1e-18) < 0.8:
            return False
        f = float(freqs[k])
        if self._tone_freq is not None and abs(f - self._tone_freq) > 60:
            self._tone_frames = 0
        self._tone_freq = f
        return True


def classify(pcm: np.ndarray, rate: int, transcript: str | None = None, **kw: float) -> AmdResult:
    """Decide on a whole recording (the streaming detector fed at once)."""
    det = AnsweringMachineDetector(rate, **kw)
    if transcript:
        det.transcript(transcript)
    if det.result is None:
        det.push(pcm)
    if det.result is None:
        det.push(np.zeros(int(rate * det.silence) + det.n, dtype=np.int16))
    return det.result or AmdResult("unknown", "audio too short", det.greeting_s)
