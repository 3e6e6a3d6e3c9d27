"""The audio toolkit (`plugins/audio.py`): G.711 against the standard's reference points and
`audioop`, resampling through 20 ms frames without seams, downmix, pacing, DTMF codes."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
from livekit import rtc

from plugins import audio
from plugins.audio import (
    DTMF_DIGITS,
    Pacer,
    StreamResampler,
    g711_decode,
    g711_encode,
    make_frame,
    mono,
    resample,
)  # fmt: skip
from telephony.livekit_call import DTMF_CODES


def test_reference_codes() -> None:
    silence = np.zeros(4, dtype=np.int16)
    assert g711_encode(silence, "ulaw") == b"\xff" * 4
    assert g711_encode(silence, "alaw") == b"\xd5" * 4
    assert list(g711_decode(bytes([0xFF, 0x7F, 0x00, 0x80]), "ulaw")) == [0, 0, -32124, 32124]
    assert list(g711_decode(bytes([0xD5, 0x55, 0x2A, 0xAA]), "alaw")) == [8, -8, -32256, 32256]


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_every_sample_and_code_agrees_with_audioop(law: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    every = np.arange(-32768, 32768, dtype=np.int16)
    lin2, to_lin = (
        (audioop.lin2ulaw, audioop.ulaw2lin)
        if law == "ulaw"
        else (audioop.lin2alaw, audioop.alaw2lin)
    )
    assert g711_encode(every, law) == lin2(every.astype("<i2").tobytes(), 2)
    codes = bytes(range(256))
    assert np.array_equal(g711_decode(codes, law), np.frombuffer(to_lin(codes, 2), "<i2"))
    # float input is scaled, not truncated to zero
    assert g711_encode(np.array([0.5], dtype=np.float32), law) == g711_encode(
        np.array([16383], dtype=np.int16), law
    )


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_round_trip_keeps_speech_band_audio(law: str) -> None:
    t = np.arange(8000) / 8000
    x = (np.sin(2 * np.pi * 440 * t) * 12000 + np.sin(2 * np.pi * 1300 * t) * 3000).astype(np.int16)
    y = g711_decode(g711_encode(x, law), law).astype(float)
    snr = 10 * np.log10(np.mean(x.astype(float) ** 2) / np.mean((y - x) ** 2))
    assert snr > 30, snr  # G.711 gives ~38 dB on loud speech-band signals
    assert len(y) == len(x)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_extremes_do_not_wrap(law: str) -> None:
    x = np.array([-32768, -32767, 32767, 1, -1], dtype=np.int16)
    y = g711_decode(g711_encode(x, law), law)
    assert y[0] < -30000 and y[1] < -30000 and y[2] > 30000
    assert abs(int(y[3])) <= 16 and abs(int(y[4])) <= 16


def _sweep(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    f = 200 + (3000 - 200) * t / seconds  # 200 Hz -> 3 kHz, inside every target band
    return (np.sin(2 * np.pi * np.cumsum(f) / rate) * 10000).astype(np.int16)


def _in_frames(x: np.ndarray, src: int, dst: int, fresh_each_frame: bool = False) -> np.ndarray:
    n = src // 50
    if fresh_each_frame:  # what recordings once did: a new resampler for every frame
        return np.concatenate([resample(x[i : i + n], src, dst) for i in range(0, x.size, n)])
    r = StreamResampler(dst)
    return np.concatenate([*(r.push(x[i : i + n], src) for i in range(0, x.size, n)), r.flush()])


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (24000, 8000), (8000, 16000)])
def test_a_sweep_resampled_in_20ms_frames_has_no_seams(src: int, dst: int) -> None:
    """Frame by frame gives the same audio as the whole sweep at once (a seam would show as a
    large local error at a frame edge), with nothing lost at the edges."""
    x = _sweep(src)
    whole = StreamResampler(dst)
    reference = np.concatenate([whole.push(x, src), whole.flush()])
    y = _in_frames(x, src, dst)
    assert y.size == reference.size == x.size * dst // src
    assert np.abs(y.astype(int) - reference).max() <= 8  # of a 10,000 amplitude
    # the comparison sees seams: a resampler per frame is off by thousands at its edges
    seamed = _in_frames(x, src, dst, fresh_each_frame=True)
    m = min(seamed.size, reference.size)
    assert np.abs(seamed[:m].astype(int) - reference[:m]).max() > 1000


def test_a_rate_change_mid_stream_keeps_the_held_samples() -> None:
    r = StreamResampler(16000)
    a = r.push(_sweep(48000, 0.1), 48000)
    b = r.push(_sweep(24000, 0.1), 24000)  # the first rate's tail comes out first
    total = a.size + b.size + r.flush().size
    assert abs(total - 3200) <= 160


def test_downmix_and_frames() -> None:
    stereo = np.array([100, 300, -200, 0], dtype=np.int16)
    assert list(mono(stereo, 2)) == [200, -100]
    f = make_frame(np.array([0.5, -0.5], dtype=np.float32), 8000)
    assert (f.sample_rate, f.num_channels, f.samples_per_channel) == (8000, 1, 2)
    assert list(audio.frame_samples(rtc.AudioFrame(stereo.tobytes(), 8000, 2, 2))) == [200, -100]


async def test_the_pacer_catches_up_instead_of_drifting(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    monkeypatch.setattr(audio.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(audio.asyncio, "sleep", sleep)
    pace = Pacer(0.02)
    await pace.wait()  # tick 1 at 100.02
    now[0] += 0.05  # one round took 50 ms: ticks 2 and 3 are already due
    await pace.wait()
    await pace.wait()
    now[0] += 0.005
    await pace.wait()  # tick 4 at 100.08
    assert slept == [0.02, 0.0, 0.0, 0.005]
    assert asyncio.sleep is sleep


def test_dtmf_codes_are_rfc4733_events() -> None:
    assert DTMF_CODES["*"] == 10 and DTMF_CODES["#"] == 11 and DTMF_CODES["D"] == 15
    assert "".join(sorted(DTMF_CODES, key=DTMF_CODES.__getitem__)) == DTMF_DIGITS
