"""A local LiveKit stack built from source: LiveKit server, LiveKit SIP and Redis on loopback.

    python -m infra.livekit install            # go install both servers at pinned versions
    python -m infra.livekit up [--sip] [--env-file FILE] [--node-ip IP]

``install`` builds the binaries once into ``<data dir>/livekit/bin`` (idempotent: a binary
already built at the pinned version is kept). ``up`` starts Redis, the server and (with
``--sip``) LiveKit SIP, all listening on 127.0.0.1 with a freshly generated API key and secret,
waits until each answers, prints the variables a worker needs and stops everything on Ctrl+C
or SIGTERM.

WebRTC never pairs loopback candidates, so a browser or SDK on the same machine reaches the
server's media through ``--node-ip`` (127.0.0.1 by default, which works for peers on the same
host because the server also offers the loopback candidate; the tests use a documentation
address on a veth pair inside their own network namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from plugins.net import free_port


@dataclass(frozen=True)
class GoBinary:
    """A server built with ``go install PACKAGE@VERSION``."""

    name: str
    package: str
    version: str
    cgo: tuple[tuple[str, str], ...] = ()
    """(pkg-config name, Debian package) pairs the build links against."""
    module: str = ""
    """The module holding ``package``, where it is not the path before ``/cmd/``."""

    @property
    def module_path(self) -> str:
        return self.module or self.package.split("/cmd/")[0]


# Pinned: the newest releases the Go module proxy serves that `go install` can build (later
# livekit-server releases carry `replace` directives, which `go install pkg@version` refuses;
# livekit/sip releases after v1.8.0 are not served).
SERVER = GoBinary("livekit-server", "github.com/livekit/livekit-server/cmd/server", "v1.13.5")
SIP = GoBinary(
    "livekit-sip", "github.com/livekit/sip/cmd/livekit-sip", "v1.8.0",
    cgo=(("opus", "libopus-dev"), ("opusfile", "libopusfile-dev"), ("soxr", "libsoxr-dev")),
)  # fmt: skip
BINARIES = (SERVER, SIP)
COMPOSE = GoBinary(
    "docker-compose", "github.com/docker/compose/v5/cmd", "v5.6.0",
    module="github.com/docker/compose/v5",
)  # fmt: skip
"""Docker Compose (the standalone binary), for validating ``infra/compose.yaml`` where the
Docker client has no compose plugin: ``install --compose`` builds it."""


class StackError(RuntimeError):
    """Something the user must fix (a missing tool or package, a server that did not start)."""


def data_dir() -> Path:
    """The worker's data directory (``WORKER_DATA_DIR``, else the XDG default), /livekit."""
    base = os.environ.get("WORKER_DATA_DIR")
    if base:
        return Path(base) / "livekit"
    xdg = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return xdg / "voice-worker" / "livekit"


def binary_path(b: GoBinary, root: Path | None = None) -> Path:
    return (root or data_dir()) / "bin" / f"{b.name}-{b.version}"


def _log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def check_build_tools(b: GoBinary) -> None:
    """Fail with a message that names what is missing before a long build starts."""
    if shutil.which("go") is None:
        raise StackError("building LiveKit needs Go: https://go.dev/dl or apt-get install golang")
    if not b.cgo:
        return
    if shutil.which("pkg-config") is None:
        raise StackError(f"{b.name} links C libraries: apt-get install pkg-config")
    missing = [
        deb for pc, deb in b.cgo
        if subprocess.run(["pkg-config", "--exists", pc], capture_output=True).returncode != 0
    ]  # fmt: skip
    if missing:
        raise StackError(f"{b.name} needs these packages: apt-get install {' '.join(missing)}")


def install(root: Path | None = None, *, only: tuple[GoBinary, ...] = BINARIES) -> list[Path]:
    """Build each binary unless it is already there at its pinned version."""
    out = []
    for b in only:
        dest = binary_path(b, root)
        if dest.exists():
            _log(f"{b.name} {b.version}: already built ({dest})")
            out.append(dest)
            continue
        check_build_tools(b)
        _build(b, dest)
        out.append(dest)
    return out


def _build(b: GoBinary, dest: Path) -> None:
    """``go get`` the pinned module into a scratch module, then ``go build`` its command.

    This is ``go install pkg@version`` by hand: plain ``go install`` also looks the module up
    in the proxy's version list (for deprecation notices), which the proxy we can reach
    refuses for livekit/sip. Dependencies resolve the same way, from the module's own go.mod.
    """
    _log(f"building {b.name} {b.version} from the Go module proxy (a few minutes the first time)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    module = b.module_path
    env = {**os.environ, "CGO_ENABLED": "1" if b.cgo else "0", "GOFLAGS": "-mod=mod",
           "GOWORK": "off"}  # fmt: skip
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        (Path(scratch) / "go.mod").write_text("module voiceworker/build\n\ngo 1.26\n")
        _go(b, ["go", "get", f"{module}@{b.version}"], scratch, env, start)
        _go(b, ["go", "build", "-v", "-trimpath", "-o", str(dest) + ".part", b.package],
            scratch, env, start)  # fmt: skip
    os.replace(str(dest) + ".part", dest)
    _log(f"{b.name} {b.version} built in {time.monotonic() - start:.0f} s: {dest}")


def _go(b: GoBinary, argv: list[str], cwd: str, env: dict[str, str], start: float) -> None:
    """Run a go command, printing a progress line every 15 s and its tail if it fails."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    last, packages, tail = time.monotonic(), 0, list[str]()
    for line in proc.stdout:
        tail = [*tail[-29:], line.rstrip()]
        if not line.startswith("go: "):
            packages += 1
        if time.monotonic() - last > 15:
            last = time.monotonic()
            what = "downloading" if argv[1] == "get" else f"{packages} packages compiled"
            _log(f"  {b.name}: {what}, {last - start:.0f} s")
    if proc.wait() != 0:
        raise StackError(f"building {b.name} failed ({' '.join(argv[:2])}):\n" + "\n".join(tail))


@dataclass
class StackConfig:
    node_ip: str = "127.0.0.1"
    port: int = 7880
    rtc_udp_start: int = 50000
    rtc_udp_end: int = 50100
    redis_port: int = 0
    """0: a free port."""
    sip: bool = False
    sip_port: int = 5060
    rtp_start: int = 10000
    rtp_end: int = 10100
    api_key: str = field(default_factory=lambda: "API" + secrets.token_hex(6))
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        out = {"LIVEKIT_URL": self.url, "LIVEKIT_API_KEY": self.api_key,
               "LIVEKIT_API_SECRET": self.api_secret}  # fmt: skip
        if self.sip:
            out["LIVEKIT_SIP_ADDRESS"] = f"127.0.0.1:{self.sip_port}"
        return out

    def server_yaml(self) -> dict[str, object]:
        return {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "keys": {self.api_key: self.api_secret},
            "redis": {"address": f"127.0.0.1:{self.redis_port}"},
            "rtc": {
                "tcp_port": 0,  # no ICE over TCP: its listener would take every interface
                "port_range_start": self.rtc_udp_start,
                "port_range_end": self.rtc_udp_end,
                "node_ip": self.node_ip,
                "use_external_ip": False,
                "enable_loopback_candidate": self.node_ip == "127.0.0.1",
                "ips": {"includes": [f"{self.node_ip}/32"]},
            },
            "room": {"empty_timeout": 30, "departure_timeout": 10},
            "logging": {"level": "info"},
        }

    def sip_yaml(self) -> dict[str, object]:
        return {
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "ws_url": self.url,
            "redis": {"address": f"127.0.0.1:{self.redis_port}"},
            "sip_port": self.sip_port,
            "listen_ip": "127.0.0.1",
            "nat_1_to_1_ip": "127.0.0.1",
            "rtp_port": {"start": self.rtp_start, "end": self.rtp_end},
            "use_external_ip": False,
            # LiveKit SIP refuses calls ("cpu exhausted") above 90% CPU by default; on a
            # developer's machine the worker beside it is what keeps the CPU busy
            "max_cpu_utilization": 1.0,
            "logging": {"level": "info"},
        }


class Stack:
    """The running processes; ``stop`` ends them in reverse order."""

    def __init__(self, conf: StackConfig, workdir: Path, root: Path | None = None) -> None:
        self.conf = conf
        self.workdir = workdir
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                start_new_session=True)  # fmt: skip
        log.close()
        self.procs.append((name, proc))
        return proc

    def start(self, timeout: float = 60.0) -> None:
        conf = self.conf
        missing = [b.name for b in (SERVER, SIP)[: 2 if conf.sip else 1]
                   if not binary_path(b, self.root).exists()]  # fmt: skip
        if missing:
            raise StackError(f"not built: {', '.join(missing)}: python -m infra.livekit install")
        redis = shutil.which("redis-server")
        if redis is None:
            raise StackError("redis-server is needed: apt-get install redis-server")
        if not conf.redis_port:
            conf.redis_port = free_port()
        deadline = time.monotonic() + timeout
        self._spawn("redis", [redis, "--port", str(conf.redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", "."])  # fmt: skip
        self._wait("redis", lambda: _redis_ping(conf.redis_port), deadline)

        (self.workdir / "livekit.yaml").write_text(yaml.safe_dump(conf.server_yaml()))
        self._spawn("livekit-server", [str(binary_path(SERVER, self.root)),
                                       "--config", str(self.workdir / "livekit.yaml")])  # fmt: skip
        self._wait("livekit-server", lambda: _http_ok(f"http://127.0.0.1:{conf.port}/"), deadline)
        if conf.sip:
            (self.workdir / "sip.yaml").write_text(yaml.safe_dump(conf.sip_yaml()))
            self._spawn("livekit-sip", [str(binary_path(SIP, self.root)),
                                        "--config", str(self.workdir / "sip.yaml")])  # fmt: skip
            self._wait("livekit-sip", lambda: sip_options_ok(conf.sip_port), deadline)

    def _wait(self, name: str, ready: object, deadline: float) -> None:
        proc = self.procs[-1][1]
        assert callable(ready)
        while not ready():
            if proc.poll() is not None:
                raise StackError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not become ready:\n{self.log_tail(name)}")
            time.sleep(0.2)
        _log(f"{name} ready")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def dead(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name
        return None


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
            c.sendall(b"PING\r\n")
            return c.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def sip_options_ok(port: int, host: str = "127.0.0.1") -> bool:
    """True when a SIP OPTIONS over UDP gets any SIP response."""
    branch = "z9hG4bK" + secrets.token_hex(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lport = s.getsockname()[1]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:health@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        s.settimeout(0.5)
        try:
            s.sendto(msg.encode(), (host, port))
            data = s.recv(4096)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")


@contextlib.contextmanager
def running(
    conf: StackConfig, *, root: Path | None = None, timeout: float = 60.0
) -> Iterator[Stack]:
    """The stack for the duration of a ``with`` block (what the tests use)."""
    with tempfile.TemporaryDirectory(prefix="livekit-") as tmp:
        stack = Stack(conf, Path(tmp), root)
        try:
            stack.start(timeout)
            yield stack
        finally:
            stack.stop()


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """KEY=value lines, readable by the owner only (it holds the API secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in env.items())


def _up(args: argparse.Namespace) -> int:
    conf = StackConfig(node_ip=args.node_ip, port=args.port, sip=args.sip, sip_port=args.sip_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running(conf, timeout=args.timeout) as stack:
        env = conf.env()
        if args.env_file:
            write_env_file(Path(args.env_file), env)
        for k, v in env.items():
            print(f"{k}={v}", flush=True)
        _log("LiveKit is up; Ctrl+C stops it")
        if args.env_file:
            _log(f"variables written to {args.env_file}")
        while not stop.wait(0.5):
            if (name := stack.dead()) is not None:
                _log(f"{name} exited unexpectedly:\n{stack.log_tail(name)}")
                return 1
        _log("stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.livekit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="build livekit-server and livekit-sip (go install)")
    ins.add_argument("--server-only", action="store_true", help="skip LiveKit SIP (no cgo)")
    ins.add_argument("--compose", action="store_true",
                     help="also build docker-compose, to validate infra/compose.yaml")  # fmt: skip
    up = sub.add_parser("up", help="run Redis, LiveKit server (and SIP) on 127.0.0.1")
    up.add_argument("--sip", action="store_true", help="also run LiveKit SIP")
    up.add_argument("--env-file", help="write LIVEKIT_URL, LIVEKIT_API_KEY, ... here too")
    up.add_argument("--node-ip", default="127.0.0.1",
                    help="the address WebRTC media is offered on (default 127.0.0.1)")  # fmt: skip
    up.add_argument("--port", type=int, default=7880, help="signalling and API port")
    up.add_argument("--sip-port", type=int, default=5060, help="SIP port (UDP and TCP)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each start")
    args = p.parse_args(argv)
    try:
        if args.cmd == "install":
            install(
                only=((SERVER,) if args.server_only else BINARIES)
                + ((COMPOSE,) if args.compose else ())
            )
            return 0
        return _up(args)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
