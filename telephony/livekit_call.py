"""Calls in LiveKit rooms: call control through the LiveKit server API, caller details from a
SIP participant's attributes, DTMF, and outbound dialling through LiveKit SIP.

The room's audio reaches the session through the framework's room I/O; this module supplies
the rest of the call interface: hang up (delete the room, which disconnects a phone caller
with a BYE), cold transfer (``TransferSIPParticipant``, a SIP REFER), and sending DTMF.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import api, rtc
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import room as room_pb
from livekit.protocol import sip as sip_pb

from plugins.audio import DTMF_DIGITS

from .call import Call

logger = logging.getLogger("telephony.livekit")

DTMF_CODES = {d: code for code, d in enumerate(DTMF_DIGITS)}
"""LiveKit's DTMF codes are the RFC 4733 event numbers."""


@dataclass
class CallInfo:
    """Who is calling, from a LiveKit SIP participant's attributes."""

    phone_number: str | None = None
    trunk_phone_number: str | None = None
    call_id: str | None = None
    trunk_id: str | None = None
    status: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Attributes mapped from SIP headers (``sip.h.*``) and any others the trunk sets."""

    @classmethod
    def from_attributes(cls, attrs: dict[str, str]) -> CallInfo:
        known = {"sip.phoneNumber", "sip.trunkPhoneNumber", "sip.callID", "sip.trunkID",
                 "sip.callStatus"}  # fmt: skip
        return cls(
            phone_number=attrs.get("sip.phoneNumber"),
            trunk_phone_number=attrs.get("sip.trunkPhoneNumber"),
            call_id=attrs.get("sip.callID"),
            trunk_id=attrs.get("sip.trunkID"),
            status=attrs.get("sip.callStatus"),
            headers={k: v for k, v in attrs.items() if k not in known},
        )


def is_sip(participant: rtc.RemoteParticipant) -> bool:
    return bool(participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP)


async def wait_until_active(
    room: rtc.Room, participant: rtc.RemoteParticipant, limit: float = 60.0
) -> bool:
    """Wait for a phone caller's ``sip.callStatus`` to become ``active`` (the call was
    answered); False if it hung up or the wait timed out. Web participants are active."""
    if not is_sip(participant) or participant.attributes.get("sip.callStatus", "active") == (
        "active"
    ):
        return True
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_attrs(changed: dict[str, str], p: rtc.Participant) -> None:
        status = p.attributes.get("sip.callStatus")
        if p.identity == participant.identity and not done.done():
            if status == "active":
                done.set_result(True)
            elif status == "hangup":
                done.set_result(False)

    def on_left(p: rtc.RemoteParticipant) -> None:
        if p.identity == participant.identity and not done.done():
            done.set_result(False)

    room.on("participant_attributes_changed", on_attrs)
    room.on("participant_disconnected", on_left)
    try:
        return await asyncio.wait_for(done, limit)
    except TimeoutError:
        return False
    finally:
        room.off("participant_attributes_changed", on_attrs)
        room.off("participant_disconnected", on_left)


ApiFactory = Callable[[], api.LiveKitAPI]


class LiveKitCall(Call):
    """Call control for a caller in a LiveKit room (SIP or web)."""

    def __init__(
        self,
        call_id: str,
        *,
        room_name: str,
        participant_identity: str,
        sip: bool,
        api_factory: ApiFactory,
        local_participant: rtc.LocalParticipant | None = None,
        info: CallInfo | None = None,
        outbound_trunk: str | None = None,
    ) -> None:
        self.transport = "livekit-sip" if sip else "livekit-web"
        self.info = info or CallInfo()
        super().__init__(call_id, output_rate=48000, caller=self.info.phone_number)
        self.room_name = room_name
        self.participant_identity = participant_identity
        self.sip = sip
        self._api_factory = api_factory
        self._local = local_participant
        self.outbound_trunk = outbound_trunk
        self.record_fields = {"room": room_name}
        self.room_deleted = False
        if sip:
            self.record_fields.update(
                trunk_phone_number=self.info.trunk_phone_number,
                sip_call_id=self.info.call_id, trunk_id=self.info.trunk_id,
            )  # fmt: skip

    async def _with_api(self, fn: Callable[[api.LiveKitAPI], Awaitable[Any]]) -> Any:
        lk = self._api_factory()
        try:
            return await fn(lk)
        finally:
            await lk.aclose()

    async def hangup(self, reason: str = "agent_hangup") -> None:
        """Delete the room: every participant leaves; a phone caller gets a BYE."""
        self.mark_ended(reason)
        await self.delete_room()

    async def delete_room(self) -> None:
        """Delete the call's room once; a room the server no longer has counts as deleted."""
        if self.room_deleted:
            return
        try:
            await self._with_api(
                lambda lk: lk.room.delete_room(room_pb.DeleteRoomRequest(room=self.room_name))
            )
        except api.TwirpError as e:
            if e.code != api.TwirpErrorCode.NOT_FOUND:
                raise
        self.room_deleted = True

    async def transfer(self, target: str) -> None:
        """Cold transfer by SIP REFER; LiveKit SIP hangs up our leg once it is accepted."""
        if not self.sip:
            raise NotImplementedError("only phone callers can be transferred")
        if not re.match(r"^(sip:|sips:|tel:)", target):
            target = f"tel:{target}" if re.match(r"^\+?\d+$", target) else f"sip:{target}"
        request = sip_pb.TransferSIPParticipantRequest(
            room_name=self.room_name, participant_identity=self.participant_identity,
            transfer_to=target, play_dialtone=False,
        )  # fmt: skip
        await self._with_api(lambda lk: lk.sip.transfer_sip_participant(request))
        self.mark_ended("transferred")

    async def warm_transfer(self, target: str, brief: Callable[[], Awaitable[None]]) -> None:
        """Dial ``target`` into this room through the outbound trunk, wait until they answer,
        let ``brief`` introduce the caller, then leave the two of them talking."""
        if not self.outbound_trunk:
            raise NotImplementedError("a warm transfer dials out: set LIVEKIT_OUTBOUND_TRUNK")
        number = re.sub(r"^(tel:|sip:)", "", target)
        request = sip_pb.CreateSIPParticipantRequest(
            sip_trunk_id=self.outbound_trunk, sip_call_to=number, room_name=self.room_name,
            participant_identity=outbound_identity(number), participant_name="transfer",
            wait_until_answered=True, play_dialtone=False,
        )  # fmt: skip
        await self._with_api(lambda lk: lk.sip.create_sip_participant(request))
        await brief()
        self.mark_ended("warm_transferred")  # the agent leaves; the room stays up

    async def send_dtmf(self, digits: str) -> None:
        if self._local is None:
            raise NotImplementedError("no room connection to send DTMF on")
        for d in digits:
            if d not in DTMF_CODES:
                raise ValueError(f"not a DTMF digit: {d!r}")
            await self._local.publish_dtmf(code=DTMF_CODES[d], digit=d)


def outbound_identity(number: str) -> str:
    return "sip-" + re.sub(r"[^0-9A-Za-z]", "", number)


async def dial(
    lk: api.LiveKitAPI,
    *,
    number: str,
    trunk_id: str,
    room: str,
    agent_name: str,
    wait_until_answered: bool = True,
) -> tuple[dispatch_pb.AgentDispatch, sip_pb.SIPParticipantInfo]:
    """Dispatch the agent to ``room`` and dial ``number`` into it through LiveKit SIP.

    If the number is not reached (busy, no answer, refused), the dispatch and the room are
    removed again, so no agent is left waiting in an empty room, and :class:`DialError` says
    why."""
    meta = json.dumps({"outbound": True, "phone_number": number})
    dispatch = await lk.agent_dispatch.create_dispatch(
        dispatch_pb.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=meta)
    )
    try:
        participant = await lk.sip.create_sip_participant(
            sip_pb.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to=number, room_name=room,
                participant_identity=outbound_identity(number), participant_name=number,
                wait_until_answered=wait_until_answered, play_dialtone=False,
            )
        )  # fmt: skip
    except api.TwirpError as e:
        for undo in (
            lambda: lk.agent_dispatch.delete_dispatch(dispatch.id, room),
            lambda: lk.room.delete_room(room_pb.DeleteRoomRequest(room=room)),
        ):
            try:
                await undo()
            except api.TwirpError as gone:  # already gone is fine; anything else is logged
                if gone.code != api.TwirpErrorCode.NOT_FOUND:
                    logger.warning("cleaning up after a failed dial: %s", gone)
        status = (e.metadata or {}).get("sip_status_code") or e.code
        raise DialError(f"{number} was not reached ({status}: {e.message})") from e
    return dispatch, participant


class DialError(RuntimeError):
    """An outbound call was not answered; the agent's dispatch and room were removed."""
