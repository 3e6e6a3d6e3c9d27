"""Settings come from defaults, a TOML file, the environment and CLI flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import SettingsError, load_settings


def test_defaults_are_documented_and_local(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_CONFIG", raising=False)
    s = load_settings()
    assert s.http.host == "127.0.0.1"
    assert s.http.port == 8080
    assert s.llm.base_url is None  # embedded server
    assert s.stt.model == "tiny.en"
    assert s.livekit.url is None
    for name, field in type(s.llm).model_fields.items():
        assert field.description, f"llm.{name} has no documented meaning"


def test_environment_overrides_toml_file(
    no_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "worker.toml"
    cfg.write_text('[tts]\nvoice = "am_adam"\nspeed = 1.2\n[llm]\nmodel = "from-file"\n')
    monkeypatch.setenv("WORKER_LLM__MODEL", "from-env")
    monkeypatch.setenv("WORKER_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LIVEKIT_URL", "wss://lk.example.test")
    s = load_settings(cfg)
    assert s.tts.voice == "am_adam" and s.tts.speed == 1.2
    assert s.llm.model == "from-env"
    assert s.data_dir == tmp_path / "d"
    assert s.livekit.url == "wss://lk.example.test"
    assert s.calls_dir == tmp_path / "d" / "calls"


def test_cli_flags_override_environment(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_CONFIG", raising=False)
    monkeypatch.setenv("WORKER_DATA_DIR", "/from/env")
    s = load_settings(
        data_dir=Path("/from/flag"), http={"host": "0.0.0.0", "port": 9}, log_level=None
    )
    assert s.data_dir == Path("/from/flag")
    assert s.http.port == 9


def test_broken_settings_file_is_a_clear_error(no_env: None, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[tts\nvoice = ")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(cfg)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_out_of_range_value_is_rejected(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_CONFIG", raising=False)
    monkeypatch.setenv("WORKER_TTS__SPEED", "5")
    with pytest.raises(SettingsError, match="speed"):
        load_settings()
