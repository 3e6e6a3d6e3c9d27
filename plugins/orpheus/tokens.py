"""Orpheus's text protocol: the prompt for a voice, and the audio-code tokens it streams back.

Orpheus (a Llama-3B fine-tune) writes speech as ``<custom_token_N>`` tokens. Audio tokens come
in frames of seven codes for SNAC's three levels (1 + 2 + 4 codes per frame, about 12 frames
a second at 24 kHz); the k-th token of a frame carries ``N - 10 - k * 4096``.
``<custom_token_2>`` (id 128258) ends the speech.
"""

from __future__ import annotations

import re

CODES_PER_FRAME = 7
CODEBOOK = 4096
AUDIO_OFFSET = 10
END_OF_SPEECH = 2
_TOKEN = re.compile(r"<custom_token_(\d+)>")


def prompt(voice: str, text: str) -> str:
    """The completions prompt that makes Orpheus say ``text`` in ``voice``."""
    return (
        f"<custom_token_3><|begin_of_text|>{voice}: {text}<|eot_id|>"
        "<custom_token_4><custom_token_5><custom_token_1>"
    )


class CodeParser:
    """Turns streamed completion text into audio codes; tokens may be split across chunks."""

    def __init__(self) -> None:
        self._buf = ""
        self.count = 0
        """Audio codes accepted so far (their position decides each code's level)."""
        self.ended = False
        self.rejected = 0

    def feed(self, text: str) -> list[int]:
        if self.ended:
            return []
        self._buf += text
        codes: list[int] = []
        last = 0
        for m in _TOKEN.finditer(self._buf):
            last = m.end()
            n = int(m.group(1))
            if n == END_OF_SPEECH:
                self.ended = True
                break
            code = n - AUDIO_OFFSET - (self.count % CODES_PER_FRAME) * CODEBOOK
            if 0 <= code < CODEBOOK:
                codes.append(code)
                self.count += 1
            else:
                self.rejected += 1  # prompt echo or a control token: not audio
        rest = self._buf[last:]
        # keep only a possible partial token for the next chunk
        cut = rest.rfind("<")
        self._buf = rest[cut:] if cut >= 0 and len(rest) - cut < 32 else ""
        return codes


def token_for(code: int, position: int) -> str:
    """The token text Orpheus writes for ``code`` at audio position ``position`` (for tests)."""
    return f"<custom_token_{code + AUDIO_OFFSET + (position % CODES_PER_FRAME) * CODEBOOK}>"


def split_levels(frames: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """SNAC's three code levels for consecutive 7-code frames."""
    l0: list[int] = []
    l1: list[int] = []
    l2: list[int] = []
    for f in frames:
        l0.append(f[0])
        l1 += [f[1], f[4]]
        l2 += [f[2], f[3], f[5], f[6]]
    return l0, l1, l2
