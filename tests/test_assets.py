"""Model settings resolve to offline assets, local paths or hub names; gaps name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import assets


def test_missing_asset_error_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(assets.AssetError, match="python -m worker download-files"):
        assets.resolve("tiny.en", tmp_path)
    with pytest.raises(assets.AssetError, match="--with whisper-base"):
        assets.resolve("base", tmp_path)


def test_local_path_and_hub_name_pass_through(tmp_path: Path) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    assert assets.resolve(str(local), tmp_path) == str(local)
    assert assets.resolve("Systran/faster-whisper-small.en", tmp_path) == (
        "Systran/faster-whisper-small.en"
    )
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.resolve("./no/such/model", tmp_path)


def test_installed_assets_verify_against_pinned_hashes(real_models_dir: Path) -> None:
    for name in assets.default_assets():
        assert assets.verify(real_models_dir, name), name


def test_install_is_idempotent(real_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*_a: object, **_k: object) -> Path:
        raise AssertionError("an installed asset must not be downloaded again")

    monkeypatch.setattr(assets, "_fetch", no_download)
    for name in assets.default_assets():
        assert assets.install(real_models_dir, name) == assets.asset_path(real_models_dir, name)


def test_corrupt_asset_fails_verification(real_models_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    target = copy / assets.ASSETS["smollm2"].target
    target.parent.mkdir(parents=True)
    data = bytearray(assets.asset_path(real_models_dir, "smollm2").read_bytes()[:4096])
    target.write_bytes(bytes(data))
    assert not assets.verify(copy, "smollm2")
