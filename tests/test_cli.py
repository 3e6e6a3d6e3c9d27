"""The debugging commands: results on stdout, clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import word_error_rate

pytestmark = pytest.mark.models


def _run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_say_then_transcribe_round_trips(data_dir: Path) -> None:
    wav = data_dir / "out.wav"
    said = _run(data_dir, "say", "Your table for three is booked at seven.", "-o", str(wav))
    assert said.returncode == 0, said.stderr
    assert wav.stat().st_size > 24000
    heard = _run(data_dir, "transcribe", str(wav))
    assert heard.returncode == 0, heard.stderr
    assert word_error_rate("Your table for three is booked at seven.", heard.stdout) < 0.3
    assert "loading" not in heard.stdout  # logs stay on stderr


def test_transcribe_rejects_a_file_that_is_not_wav(data_dir: Path) -> None:
    bogus = data_dir / "notes.wav"
    bogus.write_text("this is not audio")
    res = _run(data_dir, "transcribe", str(bogus))
    assert res.returncode == 2
    assert "not a PCM WAV" in res.stderr
    assert "Traceback" not in res.stderr
    missing = _run(data_dir, "transcribe", str(data_dir / "nope.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize("text", ["", "   ", "?!"])
def test_say_rejects_empty_text(data_dir: Path, text: str) -> None:
    res = _run(data_dir, "say", text, "-o", str(data_dir / "x.wav"))
    assert res.returncode == 2
    assert "empty" in res.stderr
    assert not (data_dir / "x.wav").exists()


def test_missing_models_name_the_download_command(tmp_path: Path) -> None:
    res = _run(tmp_path, "transcribe", str(tmp_path / "x.wav"))
    assert res.returncode == 2
    (tmp_path / "x.wav").write_bytes(b"")
    res = _run(tmp_path, "say", "hello", "-o", str(tmp_path / "y.wav"))
    assert res.returncode == 2
    assert "python -m worker download-files" in res.stderr


def test_check_loads_every_model_and_reports_timings(data_dir: Path) -> None:
    res = _run(data_dir, "check")
    assert res.returncode == 0, res.stderr
    for part in ("vad", "turn", "stt", "tts", "llm"):
        assert any(line.startswith(part) for line in res.stdout.splitlines()), res.stdout
    assert "check is complete" in res.stdout.lower()


def test_unknown_voice_is_a_one_line_error_listing_voices(data_dir: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "worker", "say", "hello", "-o", str(data_dir / "x.wav"),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "WORKER_TTS__VOICE": "nobody"},
    )  # fmt: skip
    assert res.returncode == 2
    assert "unknown Kokoro voice 'nobody'" in res.stderr and "af_heart" in res.stderr
    assert "Traceback" not in res.stderr
