"""Every use of livekit-agents internals, in one place.

The framework has no public API yet for what these do: reading the speech handle a reply is
generated for, hooking and cancelling the preemptive (speculative) generation of the session's
current activity, running an ``AgentServer`` with its own signal handling and drain but without
parsing ``sys.argv``, and making a ``ChunkedStream`` out of a streaming TTS. Nothing else in the
project touches a private framework name (``tests/test_framework_contract.py`` checks both that
and the shape of each internal, so an upgrade that moves one fails there first, loudly).

Lives under ``plugins/``, the lowest layer, so the plugins and the worker can both use it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any

from livekit.agents import AgentServer, APIConnectOptions
from livekit.agents import tts as agents_tts

logger = logging.getLogger("plugins.lk_private")

TESTED_VERSION = "1.8.9"
"""The livekit-agents release these internals were read from (pinned in pyproject.toml)."""

installed_version = importlib.metadata.version("livekit-agents")
if installed_version != TESTED_VERSION:
    logger.warning(
        "livekit-agents %s is installed; this project's use of its internals was checked "
        "against %s: run tests/test_framework_contract.py before trusting it",
        installed_version, TESTED_VERSION,
    )  # fmt: skip


def current_speech_handle_id() -> str | None:
    """The id of the speech handle the framework is generating for, if any."""
    from livekit.agents.voice.agent_activity import _SpeechHandleContextVar

    handle = _SpeechHandleContextVar.get(None)
    return handle.id if handle is not None else None


def session_activity(session: Any) -> Any | None:
    """The session's current ``AgentActivity`` (None before start or between agents)."""
    return getattr(session, "_activity", None)


def pending_preemptive_generation(activity: Any) -> Any | None:
    """The activity's speculative reply not yet committed to, if any (has ``speech_handle``)."""
    return getattr(activity, "_preemptive_generation", None)


def cancel_preemptive_generation(activity: Any) -> None:
    """Drop the activity's speculative reply (as the framework does on a changed transcript)."""
    activity._cancel_preemptive_generation()


def hook_preemptive_generation(
    activity: Any, hook: Callable[[Callable[[Any], None], Any], None]
) -> None:
    """Route the activity's "start a speculative reply" callback through ``hook(original,
    info)``, which decides whether to call the framework's original."""
    original = activity.on_preemptive_generation
    activity.on_preemptive_generation = lambda info: hook(original, info)


def run_agent_server(server: AgentServer, args: Any) -> None:
    """Run ``server`` until SIGINT/SIGTERM with the framework's own signal handling and drain,
    from ``cli.proto.CliArgs`` (``cli.run_app`` would parse ``sys.argv`` instead)."""
    from livekit.agents.cli.cli import _run_worker

    _run_worker(server, args)


def synthesize_with_stream(
    tts: agents_tts.TTS, text: str, conn_options: APIConnectOptions
) -> agents_tts.ChunkedStream:
    """A one-shot synthesis of ``text`` made from the TTS's streaming implementation."""
    return tts._synthesize_with_stream(text, conn_options=conn_options)
