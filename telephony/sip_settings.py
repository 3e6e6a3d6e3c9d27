"""The direct SIP endpoint's settings: ``settings.sip`` of the worker, and what
:class:`telephony.sip.SipServer` is built from (defined here so the transport needs nothing
from the worker)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator


class SIPSettings(BaseModel):
    """Direct SIP/RTP (UDP): trunks and softphones call the worker without LiveKit."""

    listen: str | None = Field(
        None, description="`HOST:PORT` to answer SIP on (`--sip`); unset means off."
    )
    public_address: str | None = Field(
        None, description="Address written into Contact and SDP when the worker is behind NAT."
    )
    rtp_ports: str = Field("10000-20000", description="UDP port range for RTP, `LOW-HIGH`.")
    max_calls: int = Field(
        4, ge=1,
        description="Of the worker's `max_calls`, at most this many SIP calls; beyond either "
        "callers get 486.",
    )  # fmt: skip
    allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Source networks admitted without authentication (CIDR).",
    )
    username: str = Field("", description="Digest user; with a password, others must log in.")
    password: SecretStr = Field(SecretStr(""), description="Digest password.")
    realm: str = Field("voice-worker", description="Digest realm.")
    codecs: list[Literal["PCMU", "PCMA"]] = Field(
        default_factory=lambda: ["PCMU", "PCMA"],  # type: ignore[arg-type]
        description="G.711 laws we accept.",
    )
    answer_delay: float = Field(
        0.0, ge=0, description="Seconds of ringing before the 200 OK (0 answers at once)."
    )
    jitter_packets: int = Field(
        3, ge=1, le=50, description="Reordering depth: a gap is given up after this many packets."
    )
    rtp_timeout: float = Field(
        30.0, ge=0, description="Hang up after this many seconds without caller RTP (0: never)."
    )
    symmetric_rtp: bool = Field(
        False, description="Send RTP back to where the caller's RTP comes from (NAT)."
    )
    transfer_target: str | None = Field(
        None, description="Where the agent's transfer tool sends callers (a SIP URI)."
    )
    transfer_wait: float = Field(
        5.0, gt=0,
        description="Seconds a cold transfer waits for the far end's NOTIFY before leaving the "
        "call anyway.",
    )  # fmt: skip
    max_auth_failures: int = Field(
        10, ge=1,
        description="Failed digest logins from one address in a minute before it gets 403 for "
        "the rest of the minute.",
    )  # fmt: skip
    user_agent: str = Field("voice-worker", description="Our User-Agent header and SDP name.")

    @field_validator("rtp_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        low, sep, high = v.partition("-")
        if not (sep and low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) < 65536):
            raise ValueError("expected LOW-HIGH with 1024 <= LOW < HIGH < 65536")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            _, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError("expected HOST:PORT")
        return v

    @field_validator("allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v

    @property
    def host(self) -> str:
        """The address SIP binds (``listen``'s host; loopback when unset)."""
        host = (self.listen or "127.0.0.1:5060").rpartition(":")[0].strip("[]")
        return host or "127.0.0.1"

    @property
    def port(self) -> int:
        return int((self.listen or "127.0.0.1:5060").rpartition(":")[2])

    @property
    def rtp_range(self) -> tuple[int, int]:
        low, _, high = self.rtp_ports.partition("-")
        return int(low), int(high)
