"""The deployment files: the compose file is valid and wires every service's required
settings; `docker compose config` checks it too where a Docker client exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import livekit as stack
from worker.settings import load_settings

INFRA = Path(__file__).resolve().parent.parent / "infra"
ENV = {"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": "s" * 32, "LIVEKIT_OUTBOUND_TRUNK": ""}


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; a missing required one raises."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", sub, text)


def _compose(env: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(_interpolate((INFRA / "compose.yaml").read_text(), env))


def test_compose_wires_every_service() -> None:
    doc = _compose(ENV)
    services = doc["services"]
    assert set(services) == {
        "redis", "livekit", "sip", "vllm", "llm-node", "orpheus", "orpheus-node", "worker"
    }  # fmt: skip
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)
    # host networking everywhere (use_external_ip needs the host's addresses); the services
    # meet on loopback, and nothing else is published
    for name, svc in services.items():
        assert svc["network_mode"] == "host" and "ports" not in svc, name
    assert "127.0.0.1" in services["redis"]["command"]
    # the images are the versions the tests build and run (python -m infra.livekit)
    assert services["livekit"]["image"].endswith(":" + stack.SERVER.version)
    assert services["sip"]["image"].endswith(":" + stack.SIP.version)
    # LiveKit server: keys from the environment, Redis shared with SIP
    lk = services["livekit"]
    assert lk["environment"]["LIVEKIT_KEYS"] == f"APIkey: {'s' * 32}"
    lk_conf = yaml.safe_load((INFRA / "livekit.yaml").read_text())
    assert lk_conf["redis"]["address"] == "127.0.0.1:6379" and lk_conf["port"] == 7880
    assert lk_conf["bind_addresses"] == ["127.0.0.1"]
    # LiveKit SIP: same key pair, the server's address, the same Redis
    sip = yaml.safe_load(services["sip"]["environment"]["SIP_CONFIG_BODY"])
    assert (sip["api_key"], sip["api_secret"]) == ("APIkey", "s" * 32)
    assert sip["ws_url"] == "ws://127.0.0.1:7880"
    assert sip["redis"]["address"] == "127.0.0.1:6379"
    # vLLM: its config file exists and enables what the worker relies on
    vllm = yaml.safe_load((INFRA / "vllm/llm.yaml").read_text())
    assert vllm["port"] == 8000 and vllm["enable-prefix-caching"] is True
    assert vllm["host"] == "127.0.0.1"
    assert vllm["enable-auto-tool-choice"] is True
    # the worker: every variable is one our settings understand, pointing at the services
    env = services["worker"]["environment"]
    assert env["LIVEKIT_URL"] == "ws://127.0.0.1:7880"
    assert env["WORKER_LLM__BASE_URL"] == f"http://127.0.0.1:{vllm['port']}/v1"
    assert services["worker"]["command"][-1] == "start"
    # a node agent beside each vLLM server, in the Redis db the worker's router reads
    orpheus = yaml.safe_load((INFRA / "vllm/orpheus.yaml").read_text())
    for agent, server, port in (("llm-node", "vllm", vllm["port"]),
                                ("orpheus-node", "orpheus", orpheus["port"])):  # fmt: skip
        args = services[agent]["command"]
        assert args[:4] == ["python", "-m", "infra.router", "node"], args
        assert args[args.index("--vllm") + 1] == f"http://127.0.0.1:{port}"
        assert args[args.index("--redis") + 1] == env["WORKER_ROUTER__REDIS_URL"]
        assert server in services[agent]["depends_on"]
    assert services["orpheus"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # the adapter folder: the same path in the server and its agent (the router setting)
    folder = services["orpheus-node"]["environment"]["WORKER_ROUTER__ADAPTERS_DIR"]
    for svc in ("orpheus", "orpheus-node"):
        assert any(v.split(":")[1] == folder for v in services[svc]["volumes"]), svc
    node_args = services["orpheus-node"]["command"]
    assert node_args[node_args.index("--max-loras") + 1] == str(orpheus["max-loras"])
    assert orpheus["port"] != vllm["port"] and orpheus["enable-lora"] is True
    # Docker waits past the drain (calls go on, then the closing line) before it kills
    grace = services["worker"]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) * 60 >= float(env["WORKER_DRAIN_TIMEOUT"]) + 30
    dockerfile = (INFRA / services["worker"]["build"]["dockerfile"].split("/")[-1]).read_text()
    # what the image needs: npm for the Kokoro voices, the whole infra package, a writable /data
    assert "npm" in dockerfile and "COPY infra infra" in dockerfile
    assert "chown -R agent /data" in dockerfile


def test_worker_environment_is_read_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _compose(ENV)["services"]["worker"]["environment"]
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    s = load_settings()
    assert s.livekit.url == "ws://127.0.0.1:7880" and s.livekit.api_key == "APIkey"
    assert s.llm.base_url == "http://127.0.0.1:8000/v1" and s.drain_timeout == 300
    assert str(s.data_dir) == "/data" and s.livekit.agent_name == "voice-agent"
    assert s.router.redis_url == "redis://127.0.0.1:6379/1"
    assert s.router.default_url == s.llm.base_url


def test_missing_secrets_are_refused() -> None:
    with pytest.raises(KeyError, match="LIVEKIT_API_SECRET"):
        _compose({"LIVEKIT_API_KEY": "k"})
    example = dict(
        line.split("=", 1)
        for line in (INFRA / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} <= set(example)
    _compose(example)  # the example fills every required variable


def _compose_command() -> list[str]:
    """Docker Compose as built by `python -m infra.livekit install --compose` (test.sh does),
    else the Docker client's compose plugin."""
    from infra import livekit as stack

    built = stack.binary_path(stack.COMPOSE)
    if built.exists():
        return [str(built)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:  # fmt: skip
        return [docker, "compose"]
    pytest.fail("no Docker Compose: run `python -m infra.livekit install --compose`")


def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    compose = [*_compose_command(), "-f", str(INFRA / "compose.yaml"), "--env-file", str(env_file)]
    proc = subprocess.run([*compose, "config", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # and it is Compose reading our file, not a command that accepts anything
    proc = subprocess.run([*compose, "config", "--services"], capture_output=True, text=True)
    assert proc.returncode == 0 and "worker" in proc.stdout.split(), proc.stdout + proc.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((INFRA / "compose.yaml").read_text() + "\n  nonsense: [\n")
    proc = subprocess.run([*_compose_command(), "-f", str(broken), "--env-file", str(env_file),
                           "config", "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0
