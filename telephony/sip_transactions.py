"""SIP over UDP retransmits what it sends until it is answered (RFC 3261 section 17): the
T1/T2 schedule, once for both the 200 OK we send until its ACK and the requests we send in a
dialog (BYE, REFER) until their final response."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from .sip_message import SipMessage

T1, T2 = 0.5, 4.0
"""The first retransmission interval and its cap, in seconds."""
TIMER_B = 64 * T1
"""Give up on a transaction after 32 s."""


async def retransmit(send: Callable[[], None], done: Callable[[], bool]) -> bool:
    """Send again at T1, 2*T1, ... (at most T2 apart) until ``done()`` or Timer B; whether it
    got done. The caller sends the first copy itself."""
    interval, waited = T1, 0.0
    while waited < TIMER_B:
        await asyncio.sleep(interval)
        waited += interval
        if done():
            return True
        send()
        interval = min(interval * 2, T2)
    return done()


@dataclass
class ClientTransaction:
    """One request we sent, waiting for its final response (None when none came)."""

    data: bytes
    dest: tuple[str, int]
    future: asyncio.Future[SipMessage | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ClientTransactions:
    """The requests we sent, by Via branch, each retransmitted until answered."""

    def __init__(self, send: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._send = send
        self._open: dict[str, ClientTransaction] = {}

    async def request(self, branch: str, data: bytes, dest: tuple[str, int]) -> SipMessage | None:
        """Send ``data`` and wait for its final response (None after Timer B)."""
        tx = ClientTransaction(data, dest)
        self._open[branch] = tx
        self._send(data, dest)

        async def resend() -> None:
            await retransmit(lambda: self._send(data, dest), tx.future.done)
            if not tx.future.done():
                tx.future.set_result(None)  # Timer B: no answer

        resender = asyncio.create_task(resend())
        try:
            return await tx.future
        finally:
            self._open.pop(branch, None)
            resender.cancel()

    def on_response(self, resp: SipMessage) -> None:
        """A final response ends its transaction; provisional ones and strays are dropped."""
        tx = self._open.get(resp.branch)
        if tx is None or resp.status is None or resp.status < 200 or tx.future.done():
            return
        tx.future.set_result(resp)

    def close(self) -> None:
        """Stop waiting: every open request gets None."""
        for tx in list(self._open.values()):
            if not tx.future.done():
                tx.future.set_result(None)
