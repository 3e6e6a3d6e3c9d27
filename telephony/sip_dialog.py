"""One SIP dialog (RFC 3261 section 12) and its RTP session: the call the agent talks on."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
from typing import TYPE_CHECKING

import numpy as np
from livekit import rtc

from . import sdp
from .call import Call
from .rtp import RATE, RtpSession
from .sip_message import SipMessage, new_tag, tag, uri_of, uri_user

if TYPE_CHECKING:
    from .sip import SipServer


class TransferError(RuntimeError):
    """The far end refused or failed the transfer; the call goes on."""


class DialogState(enum.Enum):
    """Where a call's dialog is; it only moves forward."""

    EARLY = "early"
    """The INVITE is in; no final response yet (ringing)."""
    ANSWERED = "answered"
    """Our 200 OK is out, retransmitted until the caller's ACK."""
    CONFIRMED = "confirmed"
    """The ACK came: the call is up."""
    ENDED_EARLY = "ended early"
    """Cancelled or failed before the answer."""
    ENDED = "ended"
    """BYE sent or received after the answer."""


class SipCall(Call):
    """One SIP dialog and its RTP session, seen by the agent as a :class:`Call`."""

    transport = "sip"

    def __init__(self, server: SipServer, invite: SipMessage, source: tuple[str, int]) -> None:
        from_hdr = invite.get("from") or ""
        super().__init__(
            f"sip-{secrets.token_hex(6)}", output_rate=RATE, caller=uri_user(uri_of(from_hdr))
        )
        self.server = server
        self.sip_call_id = invite.call_id
        self.local_tag = new_tag()
        self.remote_tag = tag(from_hdr) or ""
        self.local_uri = uri_of(invite.get("to") or "")
        self.remote_from = from_hdr
        self.local_to = f"{invite.get('to')};tag={self.local_tag}"
        contact = invite.get("contact")
        self.remote_target = uri_of(contact) if contact else f"sip:{source[0]}:{source[1]}"
        self.route_set = invite.get_all("record-route")
        self.source = source
        self.local_cseq = secrets.randbelow(10_000) + 1
        self.remote_cseq = invite.cseq[0]
        self.invite = invite
        self.invite_branch = invite.branch
        self.state = DialogState.EARLY
        self.offer_in_invite = bool(invite.body)
        self.rtp: RtpSession | None = None
        self.sdp: sdp.SessionWriter | None = None
        self.notify_waiter: asyncio.Future[int] | None = None
        self.ringing_task: asyncio.Task[None] | None = None
        self.watch_task: asyncio.Task[None] | None = None

    # -- the dialog's state ----------------------------------------------------------------

    @property
    def answered(self) -> bool:
        """Our 200 OK went out (whether or not the call has ended since)."""
        return self.state in (DialogState.ANSWERED, DialogState.CONFIRMED, DialogState.ENDED)

    @property
    def confirmed(self) -> bool:
        return self.state is DialogState.CONFIRMED

    @property
    def terminated(self) -> bool:
        return self.state in (DialogState.ENDED, DialogState.ENDED_EARLY)

    def answer(self) -> None:
        if self.state is DialogState.EARLY:
            self.state = DialogState.ANSWERED

    def confirm(self) -> None:
        """The caller's ACK for our 200 OK."""
        if self.state is DialogState.ANSWERED:
            self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        """The dialog is over (BYE either way, CANCEL, or a failure before the answer)."""
        if not self.terminated:
            self.state = DialogState.ENDED if self.answered else DialogState.ENDED_EARLY

    def receive_audio(self, pcm: np.ndarray) -> None:
        self.audio_input.push(rtc.AudioFrame(pcm.tobytes(), RATE, 1, pcm.size))

    async def hangup(self, reason: str = "agent_hangup") -> None:
        """End the call and send BYE (the agent's hang-up tool ends here)."""
        self.mark_ended(reason)
        if self.state in (DialogState.ANSWERED, DialogState.CONFIRMED):
            self.terminate()
            await self.server.send_in_dialog(self, "BYE")

    async def transfer(self, target: str) -> None:
        """Cold transfer: REFER the caller to ``target``; on acceptance we leave the call."""
        if not target.lower().startswith(("sip:", "sips:", "tel:")):
            target = f"sip:{target}"
        loop = asyncio.get_running_loop()
        self.notify_waiter = loop.create_future()
        resp = await self.server.send_in_dialog(
            self, "REFER",
            [("refer-to", f"<{target}>"), ("referred-by", f"<{self.local_uri}>")],
        )  # fmt: skip
        if resp is None or resp.status is None or resp.status >= 300:
            code = resp.status if resp is not None else "no answer"
            raise TransferError(f"transfer to {target} refused ({code})")
        try:
            final = await asyncio.wait_for(
                asyncio.shield(self.notify_waiter), self.server.config.transfer_wait
            )
        except TimeoutError:
            final = 202  # accepted and still ringing: a cold transfer leaves anyway
        if final >= 300:
            raise TransferError(f"transfer to {target} failed ({final})")
        await self.hangup("transferred")

    async def send_dtmf(self, digits: str) -> None:
        if self.rtp is None or self.rtp.dtmf_pt is None:
            raise NotImplementedError("the caller did not offer telephone-event")
        self.rtp.queue_dtmf(digits)

    async def close(self) -> None:
        if self.state in (DialogState.ANSWERED, DialogState.CONFIRMED):
            with contextlib.suppress(Exception):
                await self.hangup(self.end_reason)
        self.mark_ended(self.end_reason)
        self.server.forget(self)
        for task in (self.ringing_task, self.watch_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.rtp is not None:
            await self.rtp.stop()
