"""G.711 against the standard's reference points and by decoded audio quality."""

from __future__ import annotations

import numpy as np
import pytest

from telephony import g711


def test_reference_codes() -> None:
    silence = np.zeros(4, dtype=np.int16)
    assert g711.encode(silence, "ulaw") == b"\xff" * 4
    assert g711.encode(silence, "alaw") == b"\xd5" * 4
    assert list(g711.decode(bytes([0xFF, 0x7F, 0x00, 0x80]), "ulaw")) == [0, 0, -32124, 32124]
    assert list(g711.decode(bytes([0xD5, 0x55, 0x2A, 0xAA]), "alaw")) == [8, -8, -32256, 32256]


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_round_trip_keeps_speech_band_audio(law: str) -> None:
    t = np.arange(8000) / 8000
    x = (np.sin(2 * np.pi * 440 * t) * 12000 + np.sin(2 * np.pi * 1300 * t) * 3000).astype(np.int16)
    y = g711.decode(g711.encode(x, law), law).astype(float)
    snr = 10 * np.log10(np.mean(x.astype(float) ** 2) / np.mean((y - x) ** 2))
    assert snr > 30, snr  # G.711 gives ~38 dB on loud speech-band signals
    assert len(y) == len(x)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_extremes_do_not_wrap(law: str) -> None:
    x = np.array([-32768, -32767, 32767, 1, -1], dtype=np.int16)
    y = g711.decode(g711.encode(x, law), law)
    assert y[0] < -30000 and y[1] < -30000 and y[2] > 30000
    assert abs(int(y[3])) <= 16 and abs(int(y[4])) <= 16
