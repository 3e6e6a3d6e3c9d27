"""Who may call: the allow-list, RFC 2617/7616 digest authentication and the lock-out of
sources that keep failing it. The server asks :class:`Admission` and sends what it says."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from dataclasses import dataclass

from .sip_message import split_list


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of text from the network (any characters, never an error)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


class DigestAuth:
    """RFC 2617/7616 MD5 digest with stateless, time-limited nonces."""

    NONCE_TTL = 300.0

    def __init__(self, realm: str, username: str, password: str) -> None:
        self.realm, self.username, self._password = realm, username, password
        self._key = secrets.token_bytes(16)

    def nonce(self) -> str:
        stamp = f"{time.time():.0f}"
        mac = hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}.{mac}"

    def _nonce_state(self, nonce: str) -> str:
        stamp, _, mac = nonce.partition(".")
        good = hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12) or not _same(mac, good):
            return "bad"
        return "stale" if time.time() - int(stamp) > self.NONCE_TTL else "ok"

    def challenge(self, stale: bool = False) -> str:
        return f'Digest realm="{self.realm}", nonce="{self.nonce()}", algorithm=MD5, qop="auth"' + (
            ", stale=true" if stale else ""
        )

    def check(self, method: str, header: str | None) -> str:
        """``ok``, ``stale`` (re-challenge quietly) or ``bad``."""
        if not header or not header.lower().startswith("digest "):
            return "missing"
        p: dict[str, str] = {}
        for part in split_list(header[7:]):
            k, _, v = part.partition("=")
            p[k.strip().lower()] = v.strip().strip('"')
        if p.get("username") != self.username or p.get("realm") != self.realm:
            return "bad"
        if p.get("algorithm", "MD5").upper() != "MD5":
            return "bad"
        state = self._nonce_state(p.get("nonce", ""))
        if state != "ok":
            return state
        ha1 = _md5(f"{self.username}:{self.realm}:{self._password}")
        ha2 = _md5(f"{method}:{p.get('uri', '')}")
        if p.get("qop"):
            nc, cnonce = p.get("nc", ""), p.get("cnonce", "")
            expected = _md5(f"{ha1}:{p['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        else:
            expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
        return "ok" if _same(expected, p.get("response", "")) else "bad"


@dataclass(frozen=True)
class Verdict:
    """What to do with a request from outside the allow-list."""

    admit: bool
    status: int = 0
    """The refusal to send: 403, or 401 with a challenge."""
    reason: str | None = None
    challenge: str | None = None
    failed_login: bool = False


class Admission:
    """Allow-listed sources pass; others must log in with digest, and a source with too many
    failed logins in a minute is locked out for the rest of it."""

    WINDOW_S = 60.0

    def __init__(self, allow: list[str], auth: DigestAuth | None, max_failures: int) -> None:
        self._allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self.auth = auth
        self.max_failures = max_failures
        self._failures: dict[str, deque[float]] = {}

    def allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._allow)

    def locked_out(self, host: str) -> bool:
        fails = self._failures.get(host)
        if not fails:
            return False
        while fails and fails[0] < time.monotonic() - self.WINDOW_S:
            fails.popleft()
        return len(fails) >= self.max_failures

    def _failed(self, host: str) -> None:
        self._failures.setdefault(host, deque(maxlen=1000)).append(time.monotonic())
        if len(self._failures) > 10_000:  # bounded under a spray of forged sources
            self._failures.pop(next(iter(self._failures)))

    def check(self, host: str, method: str, authorization: str | None) -> Verdict:
        if self.allowed(host):
            return Verdict(True)
        if self.auth is None:
            return Verdict(False, 403)
        if method == "OPTIONS":
            return Verdict(True)
        if self.locked_out(host):
            return Verdict(False, 403, "Too Many Failed Attempts")
        state = self.auth.check(method, authorization)
        if state == "ok":
            return Verdict(True)
        if state == "bad":
            self._failed(host)
        return Verdict(False, 401, challenge=self.auth.challenge(stale=state == "stale"),
                       failed_login=state == "bad")  # fmt: skip
