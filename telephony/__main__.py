"""``python -m telephony``: provision LiveKit SIP and place outbound calls.

    python -m telephony provision infra/sip.yaml [--dry-run] [--json]
    python -m telephony call +15551234567 [--trunk ST_xxx] [--room NAME]

The LiveKit server comes from ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET``
(the worker's settings). Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import aiohttp
from livekit import api

from .livekit_call import DialError, dial
from .provision import ProvisionError, RefusedError, load_spec, provision


def _api() -> tuple[api.LiveKitAPI, Any]:
    from worker.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as e:
        raise SystemExit(f"error: {e}") from e
    lk = settings.livekit
    if not (lk.url and lk.api_key and lk.api_secret):
        raise SystemExit("error: set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    url = lk.url.replace("wss://", "https://").replace("ws://", "http://")
    return api.LiveKitAPI(url, lk.api_key, lk.api_secret.get_secret_value()), settings


async def _provision(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    lk, _ = _api()
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


async def _call(args: argparse.Namespace) -> int:
    lk, settings = _api()
    trunk = args.trunk or settings.livekit.outbound_trunk
    if not trunk:
        raise SystemExit("error: no outbound trunk: pass --trunk or set LIVEKIT_OUTBOUND_TRUNK")
    room = args.room or f"call-{secrets.token_hex(4)}"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m telephony", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("provision", help="make LiveKit SIP trunks and dispatch rules match a file")
    pr.add_argument("file", type=Path)
    pr.add_argument("--dry-run", action="store_true", help="send nothing; show what would be sent")
    pr.add_argument("--json", action="store_true", help="print the requests as JSON")
    c = sub.add_parser("call", help="dispatch the agent and dial a number through LiveKit SIP")
    c.add_argument("number", help="E.164 number, e.g. +15551234567")
    c.add_argument("--trunk", help="outbound trunk ID (default LIVEKIT_OUTBOUND_TRUNK)")
    c.add_argument("--room", help="room name (default a fresh call-xxxx)")
    c.add_argument("--agent-name", help="agent to dispatch (default the worker's agent_name)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(_provision(args) if args.command == "provision" else _call(args))
    except (ProvisionError, RefusedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except api.TwirpError as e:
        print(f"error: LiveKit refused the request: {e.code}: {e.message}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as e:
        print(f"error: cannot reach LiveKit: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
