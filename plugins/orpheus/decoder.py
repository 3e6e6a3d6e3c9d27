"""SNAC decoding of Orpheus frames (7 codes -> 2048 samples at 24 kHz).

The TTS decodes each new frame together with the three before it (a four-frame window) and
keeps the audio only up to the window's second frame: the codec needs context on both sides,
so that audio is final. The first window is decodable once four frames have arrived, about a
third of a second of audio; the end of a reply is decoded without right-hand context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .tokens import split_levels

SAMPLE_RATE = 24000
WINDOW_FRAMES = 4
SAMPLES_PER_FRAME = 2048


SNAC_24KHZ = {
    "sampling_rate": 24000, "encoder_dim": 48, "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024, "decoder_rates": [8, 8, 4, 2], "attn_window_size": None,
    "codebook_size": 4096, "codebook_dim": 8, "vq_strides": [4, 2, 1], "noise": True,
    "depthwise": True,
}  # fmt: skip
"""The 24 kHz SNAC codec's shape (its ``config.json`` on the hub)."""


def random_snac(seed: int = 0) -> Any:
    """A SNAC 24 kHz codec of the real shape with random weights (no weights ship offline)."""
    import torch
    from snac import SNAC

    torch.manual_seed(seed)
    return SNAC(**SNAC_24KHZ).eval()


def load_snac(source: str | Path) -> Any:
    """SNAC weights from a local folder or a hub name (``hubertsiuzdak/snac_24khz``)."""
    from snac import SNAC

    return SNAC.from_pretrained(str(source)).eval()


class WindowDecoder:
    """Decodes 7-code frames to 24 kHz float32 audio, one final frame of audio per new frame."""

    def __init__(self, model: Any, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.model = model.to(device)
        self.device = device

    def __call__(self, frames: list[list[int]]) -> np.ndarray:
        """Audio for these frames (``SAMPLES_PER_FRAME`` each); the caller keeps what is final."""
        torch = self._torch
        levels = split_levels(frames)
        codes = [torch.tensor([lv], dtype=torch.int32, device=self.device) for lv in levels]
        with torch.inference_mode():
            audio = self.model.decode(codes)
        return np.asarray(audio[0, 0].float().cpu().numpy(), dtype=np.float32)
