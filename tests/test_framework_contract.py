"""The livekit-agents internals the project relies on (all in `plugins/lk_private.py`) still
have the shape it was written against, and nothing else reaches into the framework.

An upgrade of livekit-agents that renames or reshapes one of these fails here, by name, rather
than as a speculative reply that is never cancelled in the middle of a call."""

from __future__ import annotations

import ast
import contextvars
import importlib.metadata
import inspect
from pathlib import Path

import pytest
from livekit.agents import AgentSession
from livekit.agents import tts as agents_tts
from livekit.agents.voice import agent_activity

from plugins import lk_private

ROOT = Path(__file__).resolve().parents[1]
PRIVATE_NAMES = {
    "_activity", "_preemptive_generation", "_cancel_preemptive_generation",
    "_SpeechHandleContextVar", "_run_worker", "_synthesize_with_stream", "_provider_format",
}  # fmt: skip


def test_the_installed_framework_is_the_one_the_internals_were_read_from() -> None:
    assert importlib.metadata.version("livekit-agents") == lk_private.TESTED_VERSION


def test_speech_handle_context_var() -> None:
    var = agent_activity._SpeechHandleContextVar
    assert isinstance(var, contextvars.ContextVar)
    assert lk_private.current_speech_handle_id() is None  # outside any reply
    token = var.set(type("Handle", (), {"id": "speech_1"})())  # type: ignore[arg-type]
    try:
        assert lk_private.current_speech_handle_id() == "speech_1"
    finally:
        var.reset(token)


def test_session_activity_and_preemptive_generation() -> None:
    assert "self._activity" in inspect.getsource(AgentSession.__init__)
    activity = agent_activity.AgentActivity
    assert "self._preemptive_generation" in inspect.getsource(activity.__init__)
    assert inspect.signature(activity._cancel_preemptive_generation).parameters.keys() == {"self"}
    hook = inspect.signature(activity.on_preemptive_generation)
    assert list(hook.parameters) == ["self", "info"]
    # what the tracker reads from a pending generation
    assert "speech_handle" in agent_activity._PreemptiveGeneration.__dataclass_fields__


def test_hooking_calls_through_to_the_original() -> None:
    seen: list[object] = []

    class Activity:
        def on_preemptive_generation(self, info: object) -> None:
            seen.append(("original", info))

    a = Activity()
    lk_private.hook_preemptive_generation(a, lambda orig, info: (seen.append("hook"), orig(info)))
    a.on_preemptive_generation("i")
    assert seen == ["hook", ("original", "i")]


def test_run_worker_and_synthesize_with_stream() -> None:
    from livekit.agents.cli import cli, proto

    assert list(inspect.signature(cli._run_worker).parameters) == ["server", "args"]
    fields = set(proto.CliArgs.__dataclass_fields__)
    assert {"log_level", "url", "api_key", "api_secret", "dev", "log_format"} <= fields
    params = inspect.signature(agents_tts.TTS._synthesize_with_stream).parameters
    assert list(params) == ["self", "text", "conn_options"]


def _private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names] + (node.module or "").split(".")
            name = next((n for n in names if n in PRIVATE_NAMES), None)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        if name in PRIVATE_NAMES:
            found.append(f"{path}:{node.lineno} {name}")  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("package", ["worker", "plugins", "telephony", "infra"])
def test_no_other_file_reaches_into_the_framework(package: str) -> None:
    own = ROOT / "plugins" / "lk_private.py"
    uses = [u for p in sorted((ROOT / package).rglob("*.py")) if p != own for u in _private_uses(p)]
    assert uses == []


def test_the_scan_finds_a_private_use(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text(
        "def f(s):\n    return getattr(s, '_activity', None) or s._preemptive_generation\n"
    )
    assert len(_private_uses(f)) == 2
