"""A small process beside a LiveKit worker that acts for its calls if the worker dies.

A worker killed mid-call (SIGKILL, the OOM killer, a crash in native code) can do nothing
for its callers, and LiveKit does not hand a lost job to another worker: the phone caller
would sit in a silent room until they hang up. So the worker starts this process first and
tells it, over a pipe, which rooms it has calls in and the conversation so far. The kernel
closes the pipe however the worker ends; if rooms are still listed then, the guardian asks
LiveKit for another agent in each (an explicit dispatch whose metadata says it resumes the
call, with the recent turns), and deletes the room (a BYE to a phone) when no agent has
joined within ``resume_wait`` seconds or when resuming is off. A worker that ends its calls
itself (hang-up, drain) leaves nothing listed, and the guardian just exits.

It runs in a session of its own, so a Ctrl+C or a group signal meant for the worker does not
reach it; it imports only the LiveKit API client, not the worker's models.

Protocol: JSON lines on stdin. The first is the configuration (``url``, ``api_key``,
``api_secret``, ``agent_name``, ``resume``, ``resume_wait``); then ``{"op": "start", "room",
"agent"}`` (``agent``: the agent participant's identity), ``{"op": "turn", "room", "role",
"text"}`` and ``{"op": "end", "room"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

logger = logging.getLogger("worker.guardian")

RESUME_TURNS = 12
"""Messages of the conversation so far handed to the agent that resumes a call."""


@dataclass
class _Room:
    agent: str
    turns: list[dict[str, str]] = field(default_factory=list)


def resume_metadata(turns: list[dict[str, str]]) -> str:
    """The dispatch metadata of a resumed call: the flag and the last turns."""
    return json.dumps({"resume": True, "history": turns[-RESUME_TURNS:]})


class Guardian:
    """The worker's end of the pipe. Thread-safe: jobs run as threads of the worker."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "worker.guardian"],
            stdin=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self._proc.stdin is not None
        self._pipe: IO[bytes] | None = self._proc.stdin
        self._send(config)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            if self._pipe is None:
                return
            try:
                self._pipe.write(json.dumps(msg).encode() + b"\n")
                self._pipe.flush()
            except (BrokenPipeError, OSError) as e:  # the guardian died: calls go on unguarded
                logger.warning("the call guardian is gone (%s); calls are not guarded", e)
                self._pipe = None

    def started(self, room: str, agent: str) -> None:
        self._send({"op": "start", "room": room, "agent": agent})

    def turn(self, room: str, role: str, text: str) -> None:
        self._send({"op": "turn", "room": room, "role": role, "text": text})

    def ended(self, room: str) -> None:
        self._send({"op": "end", "room": room})

    def close(self, wait: float = 5.0) -> None:
        """The worker's own clean exit: close the pipe and let the guardian finish."""
        with self._lock:
            pipe, self._pipe = self._pipe, None
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self._proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass  # it is still resuming or hanging up a call; it exits when done


class _Watch:
    """The guardian's side: the rooms with a call, kept from the worker's messages."""

    def __init__(self) -> None:
        self.rooms: dict[str, _Room] = {}

    def apply(self, msg: dict[str, Any]) -> None:
        op, room = msg.get("op"), str(msg.get("room") or "")
        if not room:
            return
        if op == "start":
            self.rooms[room] = _Room(agent=str(msg.get("agent") or ""))
        elif op == "turn" and room in self.rooms:
            turns = self.rooms[room].turns
            turns.append({"role": str(msg.get("role")), "text": str(msg.get("text"))})
            del turns[:-RESUME_TURNS]
        elif op == "end":
            self.rooms.pop(room, None)


async def _agents_in(lk: Any, room: str) -> set[str]:
    """Identities of the agents in ``room`` that the server counts as connected."""
    from livekit import api

    res = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return {
        p.identity
        for p in res.participants
        if p.kind == api.ParticipantInfo.Kind.AGENT and p.state == api.ParticipantInfo.State.ACTIVE
    }


async def rescue(config: dict[str, Any], rooms: dict[str, _Room]) -> None:
    """For each room the worker left with a call in it: another agent, or a hang-up."""
    from livekit import api

    lk = api.LiveKitAPI(config["url"], config["api_key"], config["api_secret"])
    try:
        for name, room in rooms.items():
            resumed = False
            if config.get("resume", True):
                try:
                    # a dead worker's agent stays listed until the server notices it is gone
                    # (and an earlier lost worker's may too): only a new identity counts
                    stale = await _agents_in(lk, name) | {room.agent}
                    await lk.agent_dispatch.create_dispatch(
                        api.CreateAgentDispatchRequest(
                            agent_name=config["agent_name"], room=name,
                            metadata=resume_metadata(room.turns),
                        )
                    )  # fmt: skip
                    logger.warning("worker lost with a call in %s: another agent asked", name)
                    deadline = time.monotonic() + float(config.get("resume_wait", 15.0))
                    while time.monotonic() < deadline and not resumed:
                        await asyncio.sleep(0.5)
                        resumed = bool(await _agents_in(lk, name) - stale)
                except Exception as e:  # the room or the server is gone: try the hang-up
                    logger.warning("could not resume the call in %s: %s", name, e)
            if not resumed:
                try:
                    await lk.room.delete_room(api.DeleteRoomRequest(room=name))
                    logger.warning("worker lost with a call in %s: room deleted", name)
                except Exception as e:
                    logger.warning("could not delete room %s: %s", name, e)
    finally:
        await lk.aclose()


def main() -> int:
    """Read the worker's messages until the pipe closes; then act for what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's own Ctrl+C is its business
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    first = sys.stdin.buffer.readline()
    try:
        config = json.loads(first)
    except ValueError:
        return 2
    watch = _Watch()
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            watch.apply(msg)
    if watch.rooms:
        asyncio.run(rescue(config, watch.rooms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
