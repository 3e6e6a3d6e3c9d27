"""Direct SIP/RTP: a trunk or softphone calls the worker without LiveKit.

A user agent server over UDP (RFC 3261): INVITE is answered 100, 180, then 200 with an SDP
answer (PCMU/PCMA and telephone-event), or with an offer when the INVITE had none; ACK, BYE
either way, CANCEL, OPTIONS, INFO (DTMF), re-INVITE (keep-alive, hold, new media address) and
NOTIFY (transfer progress) are handled, and the agent can hang up (BYE) or cold-transfer
(REFER). Responses to retransmitted requests are replayed; our 2xx and our requests are
retransmitted on UDP's T1/T2 timers.

The server is this module; the parts it uses live beside it: messages (``sip_message``),
admission and digest auth (``sip_auth``), retransmission and client transactions
(``sip_transactions``), the dialog and its state (``sip_dialog``), settings (``sip_settings``).

Admission: a source allow-list, digest authentication (MD5, qop=auth) for everyone else when
credentials are set, a per-source limit on failed attempts, and a maximum number of calls
(486 beyond it; 503 while draining). Anything malformed gets its SIP error (400, 415, 481,
488, 501, 513, ...) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from plugins.audio import DTMF_DIGITS

from . import sdp
from .call import CallSlot, CallSlots
from .rtp import RtpSession
from .sip_auth import Admission, DigestAuth
from .sip_dialog import DialogState, SipCall, TransferError
from .sip_message import (
    SipMessage,
    SipParseError,
    error_from_headers,
    new_branch,
    param,
    parse,
    response,
    split_list,
    tag,
    uri_host_port,
    uri_of,
)
from .sip_settings import SIPSettings
from .sip_transactions import TIMER_B, ClientTransactions, retransmit
from .wire import WireError, integer

__all__ = ["DialogState", "SIPSettings", "SipCall", "SipServer", "TransferError"]

logger = logging.getLogger("telephony.sip")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY, REFER"
KNOWN_METHODS = {"REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK", "UPDATE", "REFER"}


# -- the server -----------------------------------------------------------------------------


class _Refused(Exception):
    """An INVITE already answered with an error response."""


class SipServer(asyncio.DatagramProtocol):
    """The UDP endpoint: admission, transactions and dialogs. ``on_call`` runs a call until it
    ends (it gets the :class:`SipCall` once the 200 OK is sent)."""

    def __init__(
        self,
        config: SIPSettings,
        on_call: Callable[[SipCall], Awaitable[Any]],
        slots: CallSlots | None = None,
    ) -> None:
        self.config = config
        self._on_call = on_call
        self.slots = slots or CallSlots(config.max_calls)
        """The worker's call limit (shared with its other transports); ``max_calls`` caps SIP."""
        self._slots_held: dict[str, CallSlot] = {}
        password = config.password.get_secret_value()
        self._admission = Admission(
            config.allow,
            DigestAuth(config.realm, config.username, password)
            if config.username and password
            else None,
            config.max_auth_failures,
        )
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = (config.host, config.port)
        self.calls: dict[str, SipCall] = {}
        self._responses: dict[tuple[str, str, str], tuple[bytes, tuple[str, int], float]] = {}
        self._retransmits: dict[str, asyncio.Task[None]] = {}
        self._client = ClientTransactions(self._send_raw)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.stats = {"invites": 0, "answered": 0, "rejected": 0, "malformed": 0}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.config.host, self.config.port)
        )
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = (host, port)
        logger.info("SIP listening on udp %s:%d", host, port)

    async def stop(self, reason: str = "worker_shutdown") -> None:
        """Hang up every call (BYE), then close the socket."""
        self.draining = True
        byes = [asyncio.ensure_future(call.hangup(reason)) for call in list(self.calls.values())]
        if byes:
            await asyncio.wait(byes, timeout=2)  # BYEs answered, or given up on
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for task in [*byes, *self._retransmits.values(), *self._tasks]:
            task.cancel()
        self._client.close()
        if self.transport is not None:
            self.transport.close()

    def forget(self, call: SipCall) -> None:
        if self.calls.get(call.sip_call_id) is call:
            del self.calls[call.sip_call_id]
            slot = self._slots_held.pop(call.sip_call_id, None)
            if slot is not None:
                slot.release()

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the wire --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # RFC 5626 keep-alive
        try:
            msg = parse(data)
        except SipParseError as e:
            self.stats["malformed"] += 1
            logger.info("malformed SIP from %s:%d: %s", addr[0], addr[1], e.reason)
            out = error_from_headers(e)
            if out is not None:
                self._send_raw(out, self._reply_address_raw(e.headers, addr))
            return
        try:
            if msg.is_request:
                self._on_request(msg, addr)
            else:
                self._on_response(msg)
        except Exception:
            logger.exception("error handling SIP from %s:%d", addr[0], addr[1])
            if msg.is_request and msg.method != "ACK":
                self._respond(msg, addr, 500)

    def error_received(self, exc: Exception) -> None:
        logger.debug("sip socket error: %s", exc)

    def _reply_address_raw(
        self, headers: list[tuple[str, str]], source: tuple[str, int]
    ) -> tuple[str, int]:
        via = next((v for k, v in headers if k == "via"), None)
        return self._reply_address(via, source)

    def _reply_address(self, via: str | None, source: tuple[str, int]) -> tuple[str, int]:
        """RFC 3261 18.2.2 and RFC 3581: the source IP, and the source port if rport asked."""
        if via is None:
            return source
        first = split_list(via)[0] if via else ""
        if param(first, "rport") is not None:
            return source
        sent_by = first.split(None, 1)[1].split(";", 1)[0] if " " in first else ""
        try:
            _, port = uri_host_port("sip:" + sent_by)
        except ValueError:
            return source
        return source[0], port

    def _send_raw(self, data: bytes, dest: tuple[str, int]) -> None:
        """Send a datagram; a bad destination is dropped, never allowed to close the socket
        (asyncio closes a datagram transport on any non-OSError from sendto)."""
        if self.transport is None or not 0 < dest[1] < 65536:
            return
        try:
            self.transport.sendto(data, dest)
        except (OSError, ValueError, OverflowError, TypeError) as e:
            logger.debug("cannot send to %s: %s", dest, e)

    def _respond(
        self,
        req: SipMessage,
        source: tuple[str, int],
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> bytes:
        extra = [("server", self.config.user_agent)] + (headers or [])
        resp = response(req, status, reason, to_tag=to_tag, headers=extra, body=body)
        data = resp.to_bytes()
        dest = self._reply_address(req.get("via"), source)
        self._send_raw(data, dest)
        if status >= 200 and req.method != "ACK":
            self._responses[self._tx_key(req)] = (data, dest, time.monotonic())
            if len(self._responses) > 2048:
                self._expire_responses()
            while len(self._responses) > 4096:  # a flood: forget the oldest answers first
                self._responses.pop(next(iter(self._responses)))
        return data

    def _tx_key(self, req: SipMessage) -> tuple[str, str, str]:
        return (req.branch or f"{req.call_id}/{req.cseq[0]}", req.method or "", req.call_id)

    def _expire_responses(self) -> None:
        cutoff = time.monotonic() - TIMER_B
        for key in [k for k, (_, _, at) in self._responses.items() if at < cutoff]:
            del self._responses[key]

    # -- requests --------------------------------------------------------------------------

    def _on_request(self, req: SipMessage, source: tuple[str, int]) -> None:
        method = req.method or ""
        if method != "ACK":
            cached = self._responses.get(self._tx_key(req))
            if cached is not None:  # a retransmission: replay our answer
                self._send_raw(cached[0], cached[1])
                return
            if method == "INVITE" and self._invite_in_progress(req):
                return
        mf = req.get("max-forwards")
        if mf is not None and int(mf) == 0 and method not in ("ACK",):
            self._respond(req, source, 483)
            return
        to_tag = tag(req.get("to"))
        call = self.calls.get(req.call_id)
        in_dialog = (
            call is not None
            and to_tag == call.local_tag
            and tag(req.get("from")) == call.remote_tag
        )
        if method == "ACK":
            self._on_ack(req, call if in_dialog else None)
            return
        if method == "CANCEL":
            self._on_cancel(req, source)
            return
        if to_tag is not None and not in_dialog:
            self._respond(req, source, 481)
            return
        if in_dialog and call is not None:
            self._in_dialog(req, source, call)
            return
        # out of dialog
        if not self._admitted(source, req):
            return
        if method == "INVITE":
            self._spawn(self._invite_or_500(req, source))
        elif method == "OPTIONS":
            self._respond(req, source, 200, headers=self._capabilities())
        elif method in ("BYE", "INFO", "NOTIFY"):
            self._respond(req, source, 481)
        elif method in KNOWN_METHODS:
            self._respond(req, source, 405, headers=[("allow", ALLOW)])
        else:
            self._respond(req, source, 501)

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("allow", ALLOW), ("accept", "application/sdp"), ("supported", "")]

    def _invite_in_progress(self, req: SipMessage) -> bool:
        call = self.calls.get(req.call_id)
        return (
            call is not None
            and not call.answered
            and req.branch == call.invite_branch
            and tag(req.get("to")) is None
        )

    def _admitted(self, source: tuple[str, int], req: SipMessage) -> bool:
        """Allow-listed sources pass; others must authenticate (or are refused with 403)."""
        verdict = self._admission.check(source[0], req.method or "", req.get("authorization"))
        if verdict.admit:
            return True
        if verdict.status == 403:
            if verdict.reason is None:
                logger.warning(
                    "SIP %s from %s refused: not on the allow-list", req.method, source[0]
                )
            self._respond(req, source, 403, verdict.reason)
            return False
        if verdict.failed_login:
            logger.warning("SIP %s from %s: digest authentication failed", req.method, source[0])
        self._respond(req, source, 401, headers=[("www-authenticate", verdict.challenge or "")])
        self._responses.pop(self._tx_key(req), None)  # the retry is a new transaction
        return False

    async def _invite_or_500(self, req: SipMessage, source: tuple[str, int]) -> None:
        """Run an INVITE; a failure before its final response still gets one (500), so no
        caller is left at 100 Trying."""
        try:
            await self._on_invite(req, source)
        except Exception:
            logger.exception("SIP INVITE from %s:%d failed", source[0], source[1])
            call = self.calls.get(req.call_id)
            if call is not None and call.answered:
                return
            if self._tx_key(req) not in self._responses:
                self._respond(req, source, 500, to_tag=call.local_tag if call else None)
            if call is not None:
                call.terminate()
                call.mark_ended("error")
                self.forget(call)
                await call.close()

    async def _on_invite(self, req: SipMessage, source: tuple[str, int]) -> None:
        self.stats["invites"] += 1
        self._respond(req, source, 100)
        require = req.get("require")
        if require:
            self._respond(req, source, 420, headers=[("unsupported", require)])
            return
        if self.draining:
            self.stats["rejected"] += 1
            self._respond(req, source, 503, headers=[("retry-after", "30")])
            return
        if req.call_id in self.calls:
            self._respond(req, source, 482, "Loop Detected")
            return
        slot = self.slots.take() if len(self.calls) < self.config.max_calls else None
        if slot is None:
            self.stats["rejected"] += 1
            logger.warning("SIP call from %s refused: %d calls up", source[0], len(self.calls))
            self._respond(req, source, 486)
            return
        try:
            neg = self._offer_of(req, source)
        except _Refused:
            slot.release()
            return
        call = SipCall(self, req, source)
        self.calls[req.call_id] = call
        self._slots_held[req.call_id] = slot
        try:
            await self._open_media(call, neg)
        except OSError as e:
            self.forget(call)
            logger.error("no RTP port for a call: %s", e)
            self._respond(req, source, 503, headers=[("retry-after", "5")])
            return
        contact = [("contact", self._contact())]
        self._respond(req, source, 180, to_tag=call.local_tag, headers=contact)
        self._responses.pop(self._tx_key(req), None)
        if self.config.answer_delay > 0:
            call.ringing_task = asyncio.current_task()
            try:
                await asyncio.sleep(self.config.answer_delay)
            except asyncio.CancelledError:
                return  # cancelled by the caller
        if call.ended.is_set() or call.terminated:
            return
        assert call.sdp is not None and call.rtp is not None
        body = (call.sdp.answer(neg) if neg else call.sdp.offer(self.config.codecs)).encode()
        ok = self._respond(
            req, source, 200, to_tag=call.local_tag,
            headers=contact + self._capabilities()[:2] + [("content-type", "application/sdp")],
            body=body,
        )  # fmt: skip
        call.answer()
        self.stats["answered"] += 1
        self._retransmit_2xx(call, ok, self._reply_address(req.get("via"), source))
        if neg is not None:
            call.rtp.start()
        logger.info("SIP call %s from %s answered (%s)", call.call_id, call.caller, source[0])
        call.watch_task = asyncio.create_task(self._watch_media(call))
        try:
            await self._on_call(call)
        finally:
            await call.close()

    def _offer_of(self, req: SipMessage, source: tuple[str, int]) -> sdp.Negotiated | None:
        """The negotiated offer of an INVITE (None for a delayed offer); raises
        :class:`_Refused` once the caller has had its final answer."""
        if not req.body:
            return None
        ctype = (req.get("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            self._respond(req, source, 415, headers=[("accept", "application/sdp")])
            raise _Refused
        neg = self._negotiate(req, source)
        if neg is None:
            raise _Refused
        return neg

    async def _open_media(self, call: SipCall, neg: sdp.Negotiated | None) -> None:
        loop = asyncio.get_running_loop()
        low, high = self.config.rtp_range
        rtp = RtpSession(
            output=call.audio_output,
            on_audio=call.receive_audio,
            on_dtmf=call.dtmf_received,
            jitter_depth=self.config.jitter_packets,
            symmetric=self.config.symmetric_rtp,
        )
        host = self.address[0]
        last: OSError | None = None
        for _ in range(50):
            port = secrets.randbelow((high - low) // 2 + 1) * 2 + low  # even ports for RTP
            try:
                await loop.create_datagram_endpoint(lambda: rtp, local_addr=(host, port))
                break
            except OSError as e:
                last = e
        else:
            raise last or OSError("no free RTP port")
        if neg is not None:
            self._apply(rtp, neg)
        call.rtp = rtp
        call.sdp = sdp.SessionWriter(self._media_address(), port, self.config.user_agent)

    def _apply(self, rtp: RtpSession, neg: sdp.Negotiated) -> None:
        rtp.codecs, rtp.send_pt, rtp.dtmf_pt = dict(neg.codecs), neg.send_pt, neg.dtmf_pt
        held = neg.remote[0] in ("0.0.0.0", "::") or neg.direction in ("recvonly", "inactive")
        rtp.sending = not held
        if not held and not (self.config.symmetric_rtp and rtp.received):
            rtp.remote = neg.remote

    def _media_address(self) -> str:
        if self.config.public_address:
            return self.config.public_address
        host = self.address[0]
        if host in ("0.0.0.0", "::"):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with contextlib.suppress(OSError), probe as s:
                s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outward address
                return str(s.getsockname()[0])
            return "127.0.0.1"
        return host

    def _contact(self) -> str:
        host = self._media_address()
        host = f"[{host}]" if ":" in host else host
        return f"<sip:agent@{host}:{self.address[1]}>"

    def _retransmit_2xx(self, call: SipCall, data: bytes, dest: tuple[str, int]) -> None:
        async def loop() -> None:
            acked = await retransmit(
                lambda: self._send_raw(data, dest), lambda: call.confirmed or call.ended.is_set()
            )
            if not acked:
                logger.warning("SIP call %s: no ACK for our 200 OK; hanging up", call.call_id)
                await call.hangup("no_ack")

        self._retransmits[call.sip_call_id] = self._spawn(loop())

    async def _watch_media(self, call: SipCall) -> None:
        """End a call whose caller stopped sending RTP (a dead phone never sends BYE)."""
        timeout = self.config.rtp_timeout
        while not call.ended.is_set() and timeout > 0:
            await asyncio.sleep(min(1.0, timeout / 4))
            rtp = call.rtp
            if rtp is not None and rtp.sending and time.monotonic() - rtp.last_received > timeout:
                logger.warning("SIP call %s: no RTP for %.0f s; hanging up", call.call_id, timeout)
                await call.hangup("rtp_timeout")

    def _on_ack(self, req: SipMessage, call: SipCall | None) -> None:
        if call is None:
            return  # ACK for a non-2xx final: the transaction cache already stopped
        call.confirm()
        task = self._retransmits.pop(call.sip_call_id, None)
        if task is not None:
            task.cancel()
        if not call.offer_in_invite and req.body and call.rtp is not None:
            try:
                neg = sdp.accept_answer(sdp.parse(req.body), self.config.codecs)
            except sdp.SdpError as e:
                logger.warning("SIP call %s: unusable SDP answer in ACK (%s)", call.call_id, e)
                self._spawn(call.hangup("bad_sdp"))
                return
            self._apply(call.rtp, neg)
            call.offer_in_invite = True
            call.rtp.start()

    def _on_cancel(self, req: SipMessage, source: tuple[str, int]) -> None:
        call = self.calls.get(req.call_id)
        if call is None or req.branch != call.invite_branch:
            self._respond(req, source, 481)
            return
        self._respond(req, source, 200)
        if not call.answered:
            call.terminate()
            self._respond(call.invite, call.source, 487, to_tag=call.local_tag)
            call.mark_ended("caller_cancel")
            if call.ringing_task is not None:
                call.ringing_task.cancel()
            self._spawn(call.close())

    def _in_dialog(self, req: SipMessage, source: tuple[str, int], call: SipCall) -> None:
        method = req.method
        cseq = req.cseq[0]
        if method != "ACK" and cseq < call.remote_cseq:
            self._respond(req, source, 500, "CSeq Out of Order")
            return
        call.remote_cseq = max(call.remote_cseq, cseq)
        if method == "BYE":
            self._respond(req, source, 200)
            call.terminate()
            call.mark_ended("caller_hangup")
        elif method == "INVITE":
            self._reinvite(req, source, call)
        elif method == "OPTIONS":
            self._respond(req, source, 200, headers=self._capabilities())
        elif method == "INFO":
            self._respond(req, source, 200)
            ctype = (req.get("content-type") or "").lower()
            if "dtmf-relay" in ctype or "dtmf" in ctype:
                for line in req.body.decode("utf-8", "replace").splitlines():
                    key, _, value = line.partition("=")
                    digit = value.strip()
                    if key.strip().lower() in ("signal", "") and len(digit) == 1:
                        if digit in DTMF_DIGITS:
                            call.dtmf_received(digit)
        elif method == "NOTIFY":
            self._respond(req, source, 200)
            text = req.body.decode("utf-8", "replace").strip()
            if text.startswith("SIP/2.0 ") and call.notify_waiter is not None:
                with contextlib.suppress(WireError):  # a sipfrag we cannot read is ignored
                    code = integer(text.split(" ", 2)[1], "sipfrag status", lo=100, hi=699)
                    if code >= 200 and not call.notify_waiter.done():
                        call.notify_waiter.set_result(code)
        elif method in KNOWN_METHODS:
            self._respond(req, source, 405, headers=[("allow", ALLOW)])
        else:
            self._respond(req, source, 501)

    def _negotiate(self, req: SipMessage, source: tuple[str, int]) -> sdp.Negotiated | None:
        """Answer the SDP offer in ``req``, or send 488 (no common codec) / 400 and say None."""
        try:
            return sdp.negotiate(sdp.parse(req.body), self.config.codecs)
        except sdp.NoCommonCodec as e:
            self._respond(req, source, 488, headers=[("warning", f'304 - "{e}"')])
        except sdp.SdpError as e:
            self._respond(req, source, 400, f"Bad SDP: {e}"[:60])
        return None

    def _reinvite(self, req: SipMessage, source: tuple[str, int], call: SipCall) -> None:
        """Keep-alive, hold/unhold or a new media address; the answer keeps our codecs."""
        assert call.sdp is not None and call.rtp is not None
        if req.body:
            neg = self._negotiate(req, source)
            if neg is None:
                return
            self._apply(call.rtp, neg)
            body = call.sdp.answer(neg)
        else:
            body = call.sdp.offer(self.config.codecs)
        self._respond(
            req, source, 200, to_tag=call.local_tag,
            headers=[("contact", self._contact()), ("content-type", "application/sdp")],
            body=body.encode(),
        )  # fmt: skip

    # -- requests we send ------------------------------------------------------------------

    async def send_in_dialog(
        self, call: SipCall, method: str, headers: list[tuple[str, str]] | None = None
    ) -> SipMessage | None:
        """Send BYE/REFER in the call's dialog and wait for the final response."""
        call.local_cseq += 1
        branch = new_branch()
        port = self.address[1]
        via_host = self._media_address()
        target = call.route_set[0] if call.route_set else call.remote_target
        routes = [("route", r) for r in call.route_set]
        msg = SipMessage(
            method=method,
            uri=call.remote_target,
            headers=[
                ("via", f"SIP/2.0/UDP {via_host}:{port};branch={branch};rport"),
                ("max-forwards", "70"),
                ("from", call.local_to),
                ("to", call.remote_from),
                ("call-id", call.sip_call_id),
                ("cseq", f"{call.local_cseq} {method}"),
                ("contact", self._contact()),
                ("user-agent", self.config.user_agent),
                *routes,
                *(headers or []),
            ],
        )
        try:
            dest_host, dest_port = uri_host_port(uri_of(target))
            infos = await asyncio.get_running_loop().getaddrinfo(
                dest_host, dest_port, type=socket.SOCK_DGRAM
            )
            dest = infos[0][4][:2]
        except (OSError, ValueError, OverflowError, UnicodeError):
            dest = call.source
        return await self._client.request(branch, msg.to_bytes(), (str(dest[0]), int(dest[1])))

    def _on_response(self, resp: SipMessage) -> None:
        self._client.on_response(resp)
