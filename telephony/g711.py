"""G.711 mu-law (PCMU) and A-law (PCMA) without ``audioop`` (gone in Python 3.13).

Both directions are table lookups: every 16-bit sample's code (65,536 entries) and every
code's sample (256 entries) are computed once from the G.711 segment rules.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_MU_BIAS = 0x84
_MU_CLIP = 32635
_A_SEG_END = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)


def _mulaw_code(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _MU_CLIP) + _MU_BIAS
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _mulaw_sample(code: int) -> int:
    u = ~code & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + _MU_BIAS) << exponent
    magnitude -= _MU_BIAS
    return -magnitude if u & 0x80 else magnitude


def _alaw_code(sample: int) -> int:
    if sample >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        sample = -sample - 1
    seg = next((i for i, end in enumerate(_A_SEG_END) if sample <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    value = seg << 4
    value |= (sample >> 4) & 0x0F if seg < 2 else (sample >> (seg + 3)) & 0x0F
    return value ^ mask


def _alaw_sample(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


@cache
def _tables(law: str) -> tuple[np.ndarray, np.ndarray]:
    code, sample = (_mulaw_code, _mulaw_sample) if law == "ulaw" else (_alaw_code, _alaw_sample)
    encode = np.array([code(s) for s in range(-32768, 32768)], dtype=np.uint8)
    decode = np.array([sample(c) for c in range(256)], dtype=np.int16)
    return encode, decode


def encode(samples: np.ndarray, law: str = "ulaw") -> bytes:
    """16-bit PCM samples to G.711 bytes (``law`` is ``"ulaw"`` or ``"alaw"``)."""
    enc, _ = _tables(law)
    return enc[samples.astype(np.int16).astype(np.int32) + 32768].tobytes()


def decode(data: bytes, law: str = "ulaw") -> np.ndarray:
    """G.711 bytes to 16-bit PCM samples."""
    _, dec = _tables(law)
    return dec[np.frombuffer(data, dtype=np.uint8)]
