"""A caller corpus from many voices, split once into a tuning set and a held-back set.

Callers are Kokoro's 54 voices (the non-English ones speak English with their own accent),
espeak-ng voices at several rates and, when installed, Piper's US voice. Every line is
rendered at 16 kHz and as G.711 mu-law at 8 kHz (decoded back to 16 kHz, as a phone call
reaches the STT). Which voices tune and which are held back is fixed by a hash of the voice's
name, so no tuning decision can look at the held-back voices.

    from callers import Corpus
    corpus = Corpus.load()            # loads Kokoro once
    for voice in corpus.voices("tuning"):
        pcm16k = corpus.render("mm-hmm", voice, band="8k")
"""

from __future__ import annotations

import audioop
import hashlib
import io
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins.audio import resample  # noqa: E402

Split = Literal["tuning", "held-back"]
Band = Literal["16k", "8k"]

ESPEAK = [
    ("en-us", 150), ("en-us", 210), ("en-gb", 140), ("en-gb", 190), ("en-sc", 160),
    ("en-gb-x-rp", 175), ("en-us+f3", 180), ("en-029", 165), ("en-gb-x-gbclan", 170),
    ("en-us+m4", 130),
]  # fmt: skip

BACKCHANNELS = [
    "Mm-hmm.", "Uh-huh.", "Yeah.", "Right.", "Okay.", "Yep.", "Sure.", "Mhm.", "I see.",
    "Ha ha.", "Oh, okay.", "Yeah, yeah.",
]  # fmt: skip
INTERRUPTIONS = [
    "Wait, stop.", "No, that's wrong.", "Hold on a second.", "Sorry, can you repeat that?",
    "Actually, I want Saturday.", "Can I speak to a person?", "Two people, not four.",
    "What about Sunday?", "No.", "Stop.", "Excuse me.", "Hang on.",
    # answers said over the agent's question, with no word that asks for the floor: only
    # what they sound like tells them from a misspelt backchannel
    "Four people.", "Saturday.", "Eight o'clock.", "Noon.", "Tomorrow.", "Two.",
]  # fmt: skip


def split_of(voice: str) -> Split:
    """A third of the voices are held back, by a hash of the name (stable across runs)."""
    return "held-back" if hashlib.sha1(voice.encode()).digest()[0] % 3 == 0 else "tuning"


@dataclass
class Corpus:
    kokoro: Any
    piper: Any

    @classmethod
    def load(cls) -> Corpus:
        from worker.models import load_tts
        from worker.settings import load_settings

        kokoro = load_tts(load_settings())
        try:
            from plugins.piper import TTS as PiperTTS

            piper: Any = PiperTTS()
        except ImportError:
            piper = None
        return cls(kokoro=kokoro, piper=piper)

    def all_voices(self) -> list[str]:
        names = [f"kokoro:{v}" for v in self.kokoro.voices]
        names += [f"espeak:{v}:{rate}" for v, rate in ESPEAK]
        if self.piper is not None:
            names.append("piper:joe")
        return names

    def voices(self, split: Split) -> list[str]:
        return [v for v in self.all_voices() if split_of(v) == split]

    def render(self, text: str, voice: str, band: Band = "16k") -> np.ndarray:
        """int16 mono 16 kHz samples of ``text`` in ``voice``, through ``band``."""
        kind, _, rest = voice.partition(":")
        if kind == "kokoro":
            pcm, rate = self.kokoro.synthesize_pcm(text, voice=rest), 24000
        elif kind == "espeak":
            name, _, speed = rest.partition(":")
            pcm, rate = _espeak(text, name, int(speed))
        elif kind == "piper":
            raw = self.piper.synthesize_pcm(text)
            pcm, rate = np.frombuffer(raw, dtype=np.int16), self.piper.sample_rate
        else:
            raise ValueError(f"unknown voice {voice!r}")
        pcm = _trim(pcm)
        if band == "8k":
            narrow = resample(pcm, rate, 8000)
            law = audioop.lin2ulaw(narrow.tobytes(), 2)
            pcm, rate = np.frombuffer(audioop.ulaw2lin(law, 2), dtype=np.int16), 8000
        return resample(pcm, rate, 16000)


def _espeak(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def _trim(pcm: np.ndarray, floor: int = 200) -> np.ndarray:
    """Without the engine's own leading and trailing silence."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > floor)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm
