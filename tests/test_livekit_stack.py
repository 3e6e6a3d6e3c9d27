"""`python -m infra.livekit`: what a developer sees from `install` and `up`, run as commands."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import livekit as stack
from plugins.net import free_port


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.livekit", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_install_names_what_is_missing(tmp_path: Path) -> None:
    """No Go on PATH: a clear error before any build starts, and nothing half-built."""
    env = {"PATH": str(tmp_path), "WORKER_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)}
    out = _run("install", env=env)
    assert out.returncode == 2
    assert "needs Go" in out.stderr, out.stderr
    assert not (tmp_path / "data" / "livekit" / "bin").exists() or not any(
        (tmp_path / "data" / "livekit" / "bin").iterdir()
    )


def test_install_finds_built_binaries_and_does_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "livekit" / "bin"
    bin_dir.mkdir(parents=True)
    for b in stack.BINARIES:
        (bin_dir / f"{b.name}-{b.version}").write_text("")
    # no Go needed when everything is there
    out = _run("install", env={"PATH": "/usr/bin:/bin", "WORKER_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("already built") == 2


def test_cgo_packages_are_named() -> None:
    if shutil.which("go") is None or shutil.which("pkg-config") is None:
        pytest.skip("needs go and pkg-config to get past the first checks")
    fake = stack.GoBinary("x", "example.com/x/cmd/x", "v0.0.0",
                          cgo=(("no-such-library-here", "libnothing-dev"),))  # fmt: skip
    with pytest.raises(stack.StackError, match="apt-get install libnothing-dev"):
        stack.check_build_tools(fake)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.livekit
def test_up_prints_and_writes_the_variables_and_sigterm_stops_everything(tmp_path: Path) -> None:
    if not stack.binary_path(stack.SERVER).exists():
        pytest.fail("livekit-server not built: run `python -m infra.livekit install`")
    port, env_file = free_port(), tmp_path / "lk.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.livekit", "up", "--port", str(port), "--env-file",
         str(env_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        printed = {}
        deadline = time.monotonic() + 60
        while len(printed) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "=" in line:
                k, v = line.strip().split("=", 1)
                printed[k] = v
        assert printed["LIVEKIT_URL"] == f"ws://127.0.0.1:{port}"
        assert len(printed["LIVEKIT_API_SECRET"]) >= 32
        written = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines())
        assert written == printed
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # it holds the secret
        assert _listening(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not _listening(port), "the server outlived up"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
