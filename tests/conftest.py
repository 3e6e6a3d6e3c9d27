"""Shared fixtures: the offline models (fetched once by `python -m worker download-files`),
per-test data directories, and espeak-ng caller audio."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from plugins.audio import read_wav
from worker import assets
from worker.settings import Settings, load_settings


def models_dir() -> Path:
    """Where `python -m worker download-files` put the models (WORKER_DATA_DIR or its default)."""
    return Settings().models_dir


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """The assembled model assets; a test that needs them fails loudly if they are missing."""
    d = models_dir()
    missing = [n for n in assets.default_assets() if not assets.is_installed(d, n)]
    if missing:
        pytest.fail(
            f"model assets {missing} missing from {d}; run `python -m worker download-files` "
            "(scripts/test.sh does this)"
        )
    return d


@pytest.fixture
def data_dir(tmp_path: Path, real_models_dir: Path) -> Path:
    """A fresh data directory whose models/ points at the shared assets."""
    (tmp_path / "models").symlink_to(real_models_dir, target_is_directory=True)
    return tmp_path


@pytest.fixture
def settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Default settings, except that calls think with SmolLM2-135M, the fastest real model.

    These tests are about transports, turn-taking, faults and records; the LLM only has to
    answer. On a loaded 2-core machine the default 0.5B model needs seconds per reply and a
    cold prompt per new server, which makes a real-time call test slow for nothing. What the
    default model does is tested in `test_llm.py` and measured by `python -m worker eval`.
    """
    for var in ("WORKER_CONFIG", "LIVEKIT_URL", "WORKER_LLM__BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    return load_settings(data_dir=data_dir, llm={"embedded_model": "smollm2"})


@pytest.fixture
def default_llm_settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a new user gets them, the default LLM included."""
    for var in ("WORKER_CONFIG", "LIVEKIT_URL", "WORKER_LLM__BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    return load_settings(data_dir=data_dir)


@pytest.fixture(scope="session")
def espeak(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Make caller audio: espeak-ng speaks a sentence into a WAV (22.05 kHz mono)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is needed to make caller audio (apt-get install espeak-ng)")
    out_dir = tmp_path_factory.mktemp("speech")
    counter = iter(range(10_000))

    def speak(text: str, voice: str = "en-us", rate: int = 160) -> Path:
        path = out_dir / f"utt{next(counter)}.wav"
        subprocess.run([exe, "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
        return path

    return speak


def word_error_rate(ref: str, hyp: str) -> float:
    """Word-level Levenshtein distance over the reference length, ignoring case/punctuation."""
    norm = lambda s: "".join(c.lower() if c.isalnum() or c == " " else " " for c in s).split()  # noqa: E731
    r, h = norm(ref), norm(hyp)
    d = np.zeros((len(r) + 1, len(h) + 1), dtype=int)
    d[:, 0] = range(len(r) + 1)
    d[0, :] = range(len(h) + 1)
    for i in range(1, len(r) + 1):
        for j in range(1, len(h) + 1):
            d[i, j] = min(
                d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (r[i - 1] != h[j - 1])
            )
    return float(d[len(r), len(h)]) / max(1, len(r))


def load_pcm(path: Path) -> tuple[np.ndarray, int]:
    return read_wav(path)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for k in list(os.environ):
        if k.startswith("WORKER_") or k.startswith("LIVEKIT_"):
            monkeypatch.delenv(k)
    yield


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter finalisation once pytest has reported everything.

    A native runtime's worker thread (a tokio runtime in a Rust extension; LiveKit's FFI is
    one) once panicked while Python tore the interpreter down after all 378 tests had passed,
    and the abort (exit status 134) failed the CI run. The results are final here, so the
    exit status pytest chose is used as it is."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None or os.environ.get("VOICE_TESTS_NORMAL_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
