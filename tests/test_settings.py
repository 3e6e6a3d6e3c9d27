"""Settings come from defaults, a TOML file, the environment and CLI flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import Settings, SettingsError, load_settings


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


def test_the_settings_reference_is_generated_from_the_fields() -> None:
    """docs/settings.md's table is what the fields say now (regenerate it with
    `python -m worker.settings_doc`), and every field says what it is for."""
    from worker import settings_doc

    doc = settings_doc.DOC.read_text(encoding="utf-8")
    assert settings_doc.render(doc) == doc, "run python -m worker.settings_doc"
    for name, info in settings_doc._fields(Settings):
        assert info.description, f"{name} has no description"
    assert "`WORKER_TTS__VOICE` | `tts.voice` | `af_heart` |" in doc
    assert "`LIVEKIT_URL` or `WORKER_LIVEKIT__URL`" in doc


def test_every_link_in_the_docs_resolves() -> None:
    """README and docs/ link to each other's files and headings; none may point nowhere."""
    import re

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]

    def anchors(page: Path) -> set[str]:
        heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}

    linked = {p.name for p in pages}
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name} links to missing {target}"
            if frag:
                assert frag in anchors(dest), f"{page.name} links to missing heading {target}"
    readme = (root / "README.md").read_text(encoding="utf-8")
    for doc in (root / "docs").glob("*.md"):
        assert f"(docs/{doc.name})" in readme, f"README does not link docs/{doc.name}"
    assert linked
