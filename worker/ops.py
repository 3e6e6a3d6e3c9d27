"""Commands beside the agent: the shared speech servers and LiveKit SIP operations.

    python -m worker stt-server [--host 127.0.0.1] [--port 8091] [--model M] [--device cuda]
    python -m worker tts-server [--host 127.0.0.1] [--port 8092]
    python -m worker provision infra/sip.yaml [--dry-run] [--json]
    python -m worker dial +15551234567 [--trunk ST_xxx] [--room NAME]

They live here, not in ``plugins/`` or ``telephony/``, because they read the worker's settings
and build its models: those packages stay below the worker and never import it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from plugins.http import AppServer

from .settings import Settings


class OpsError(Exception):
    """A user-facing failure of one of these commands (the CLI prints it, exit status 2)."""


async def serve_until_signalled(stop_server: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGINT or SIGTERM, then stop the server that is already listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stop_server()


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """This module's subcommands, on the CLI's subparsers."""
    st = sub.add_parser("stt-server", parents=[common], help="serve streaming Whisper to workers")
    st.add_argument("--host", default="127.0.0.1")
    st.add_argument("--port", type=int, default=8091)
    st.add_argument("--model", help="stt.model: an offline alias, a folder or a hub name")
    st.add_argument("--device", help="cpu or cuda")
    tt = sub.add_parser("tts-server", parents=[common], help="serve Kokoro to workers (OpenAI API)")
    tt.add_argument("--host", default="127.0.0.1")
    tt.add_argument("--port", type=int, default=8092)
    what = "make LiveKit SIP trunks and dispatch rules match a file"
    pr = sub.add_parser("provision", parents=[common], help=what)
    pr.add_argument("file", type=Path)
    pr.add_argument("--dry-run", action="store_true", help="send nothing; show what would be sent")
    pr.add_argument("--json", action="store_true", help="print the requests as JSON")
    c = sub.add_parser(
        "dial", parents=[common], help="dispatch the agent and dial a number through LiveKit SIP"
    )
    c.add_argument("number", help="E.164 number, e.g. +15551234567")
    c.add_argument("--trunk", help="outbound trunk ID (default LIVEKIT_OUTBOUND_TRUNK)")
    c.add_argument("--room", help="room name (default a fresh call-xxxx)")
    c.add_argument("--agent-name", help="agent to dispatch (default the worker's agent_name)")


# --- speech servers -------------------------------------------------------------------------


def cmd_stt_server(settings: Settings, args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("model", args.model), ("device", args.device)) if v}
    if overrides:
        settings = settings.model_copy(update={"stt": settings.stt.model_copy(update=overrides)})
    return asyncio.run(_stt_server(settings, args.host, args.port))


async def _stt_server(settings: Settings, host: str, port: int) -> int:
    from plugins.faster_whisper.server import STTServer

    from .models import load_stt

    await _serve(
        STTServer(load_stt(settings)), host, port, f"STT server on ws://{host}:{port}/v1/listen"
    )
    return 0


def cmd_tts_server(settings: Settings, args: argparse.Namespace) -> int:
    if settings.tts.engine != "kokoro" or settings.tts.server_url:
        raise OpsError("the TTS server serves Kokoro in this process: tts.engine must be kokoro "
                       "and tts.server_url unset")  # fmt: skip
    return asyncio.run(_tts_server(settings, args.host, args.port))


async def _tts_server(settings: Settings, host: str, port: int) -> int:
    from plugins.kokoro import TTS as KokoroTTS
    from plugins.kokoro.server import KokoroServer

    from .models import load_tts

    tts = load_tts(settings)
    assert isinstance(tts, KokoroTTS)
    await _serve(
        KokoroServer(tts), host, port, f"Kokoro server on http://{host}:{port}/v1/audio/speech"
    )
    return 0


async def _serve(server: AppServer, host: str, port: int, ready: str) -> None:
    """Listen, say where (a supervisor may wait for this line), and serve until signalled."""
    try:
        await server.start(host, port)
    except OSError as e:
        raise OpsError(f"cannot listen on {host}:{port}: {e}") from e
    print(ready, flush=True)
    await serve_until_signalled(server.stop)


# --- LiveKit SIP ----------------------------------------------------------------------------


def _livekit_api(settings: Settings) -> Any:
    from livekit import api

    lk = settings.livekit
    if not (lk.url and lk.api_key and lk.api_secret):
        raise OpsError("set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    return api.LiveKitAPI(lk.api_url, lk.api_key, lk.api_secret.get_secret_value())


def cmd_provision(settings: Settings, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise OpsError(f"no such file: {args.file}")
    return _livekit_command(_provision(settings, args))


def cmd_dial(settings: Settings, args: argparse.Namespace) -> int:
    return _livekit_command(_dial(settings, args))


def _livekit_command(work: Any) -> int:
    """Run one LiveKit API command; refusals and unreachable servers are one-line errors."""
    import aiohttp
    from livekit import api

    from telephony.provision import ProvisionError, RefusedError

    try:
        return int(asyncio.run(work))
    except (ProvisionError, RefusedError) as e:
        raise OpsError(str(e)) from e
    except api.TwirpError as e:
        raise OpsError(f"LiveKit refused the request: {e.code}: {e.message}") from e
    except (aiohttp.ClientError, OSError) as e:
        raise OpsError(f"cannot reach LiveKit: {e}") from e


async def _provision(settings: Settings, args: argparse.Namespace) -> int:
    from telephony.provision import load_spec, provision

    spec = load_spec(args.file)
    lk = _livekit_api(settings)
    try:
        plan = await provision(lk, spec, dry_run=args.dry_run)
    finally:
        await lk.aclose()
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **plan.as_dict()}, indent=2))
        return 0
    verb = "would send" if args.dry_run else "sent"
    for a in plan.actions:
        print(f"{verb} {a.method} for {a.name}" + (f" ({a.target_id})" if a.target_id else ""))
    for name in plan.unchanged:
        print(f"unchanged: {name}")
    for d in plan.would_delete:
        print(f"on the server but not in the file (left alone): {d['kind']} {d['name']} {d['id']}")
    if not plan.actions:
        print("nothing to change")
    return 0


async def _dial(settings: Settings, args: argparse.Namespace) -> int:
    from telephony.livekit_call import DialError, dial

    trunk = args.trunk or settings.livekit.outbound_trunk
    if not trunk:
        raise OpsError("no outbound trunk: pass --trunk or set LIVEKIT_OUTBOUND_TRUNK")
    room = args.room or f"call-{secrets.token_hex(4)}"
    lk = _livekit_api(settings)
    try:
        dispatch, participant = await dial(
            lk, number=args.number, trunk_id=trunk, room=room,
            agent_name=args.agent_name or settings.livekit.agent_name,
        )  # fmt: skip
    except DialError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        await lk.aclose()
    print(json.dumps({"room": room, "dispatch_id": dispatch.id,
                      "participant_identity": participant.participant_identity,
                      "sip_call_id": participant.sip_call_id}))  # fmt: skip
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "stt-server": cmd_stt_server,
    "tts-server": cmd_tts_server,
    "provision": cmd_provision,
    "dial": cmd_dial,
}
