"""Answering-machine detection on generated audio: espeak-ng voices and a synthetic beep,
at the 8 kHz a phone line carries, with line noise added."""

from __future__ import annotations

from typing import Any

import numpy as np

from plugins.audio import read_wav, resample
from telephony.amd import AnsweringMachineDetector, classify

RATE = 8000


def _speech(espeak: Any, text: str) -> np.ndarray:
    pcm, rate = read_wav(espeak(text))
    return resample(pcm, rate, RATE)


def _silence(s: float) -> np.ndarray:
    return np.zeros(int(s * RATE), np.int16)


def _beep(s: float = 0.5, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(s * RATE)) / RATE
    return (0.4 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _line(pcm: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, 60, pcm.size)
    return np.clip(pcm + noise, -32768, 32767).astype(np.int16)


MACHINE = (
    "Hi, you have reached the Miller family. We cannot come to the phone right now. "
    "Please leave your name and number and we will call you back as soon as we can."
)


def test_long_greeting_ending_in_a_beep_is_a_machine(espeak: Any) -> None:
    audio = _line(np.concatenate([_silence(0.3), _speech(espeak, MACHINE), _silence(0.4),
                                  _beep(), _silence(1.0)]))  # fmt: skip
    det = AnsweringMachineDetector(RATE)
    first = None
    for i in range(0, audio.size, 160):  # streamed as it would arrive
        res = det.push(audio[i : i + 160])
        first = first or res
    assert first is not None and first.kind == "machine"
    assert first.reason == "long greeting" and first.greeting_s >= 3.5
    # fed past the decision, a separate detector finds the beep itself
    beep_only = classify(_line(np.concatenate([_silence(0.5), _beep(0.6), _silence(0.5)])), RATE)
    assert beep_only.kind == "machine" and beep_only.reason == "beep"
    assert beep_only.beep_at is not None and 1.0 <= beep_only.beep_at <= 1.3


def test_short_hello_is_a_human(espeak: Any) -> None:
    audio = _line(np.concatenate([_silence(0.4), _speech(espeak, "Hello?"), _silence(1.5)]))
    res = classify(audio, RATE)
    assert res.kind == "human", res
    assert res.greeting_s < 2.0


def test_a_name_and_hello_is_still_human(espeak: Any) -> None:
    audio = _line(np.concatenate([_silence(0.2), _speech(espeak, "Hello, this is Anna."),
                                  _silence(1.5)]))  # fmt: skip
    assert classify(audio, RATE).kind == "human"


def test_voicemail_words_decide_for_a_machine() -> None:
    res = classify(_silence(0.5), RATE, transcript="Sorry I missed you, please leave a message")
    assert res.kind == "machine" and res.reason == "voicemail phrase"
    assert classify(_silence(0.5), RATE, transcript="Hello, who is this?").kind != "machine"


def test_speech_is_not_mistaken_for_a_beep(espeak: Any) -> None:
    det = AnsweringMachineDetector(RATE, machine_greeting=60, max_wait=60)
    det.push(_line(_speech(espeak, MACHINE)))
    assert not det.beep_heard
