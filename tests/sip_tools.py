"""Helpers for tests and benchmarks that call the worker with real SIP peers (SIPp, baresip):
a pcap writer for caller audio, SIPp scenario files, and a raw UDP SIP client."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plugins.audio import g711_decode, g711_encode, read_wav, resample
from plugins.net import free_port

DTMF_PCAPS = Path("/usr/share/sip-tester")
"""SIPp's RFC 2833 digit recordings (Debian sip-tester), payload type 101."""


def free_udp_port() -> int:
    return free_port(kind=socket.SOCK_DGRAM)


def write_rtp_pcap(
    path: Path, pcm8k: np.ndarray, *, law: str = "ulaw", pt: int = 0, lead_silence: float = 0.0
) -> Path:
    """Caller audio as a pcap of 20 ms G.711 RTP packets, the form SIPp's play_pcap_audio reads.

    IP addresses and ports in the capture do not matter: SIPp rewrites them.
    """
    pcm = np.concatenate([np.zeros(int(lead_silence * 8000), np.int16), pcm8k.astype(np.int16)])
    pcm = np.concatenate([pcm, np.zeros((-pcm.size) % 160, np.int16)])
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    seq, ts, ssrc = 1000, 16000, 0x1234ABCD
    t0 = 1_700_000_000.0
    for i in range(pcm.size // 160):
        payload = g711_encode(pcm[i * 160 : (i + 1) * 160], law)
        rtp = struct.pack("!BBHII", 0x80, (0x80 if i == 0 else 0) | pt, seq, ts, ssrc) + payload
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
            socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"),
        ) + udp  # fmt: skip
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        t = t0 + i * 0.02
        out.append(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
        out.append(frame)
        seq, ts = (seq + 1) & 0xFFFF, ts + 160
    path.write_bytes(b"".join(out))
    return path


def wav_to_pcap(wav: Path, pcap: Path, **kw: object) -> float:
    """Convert a WAV to an RTP pcap; returns the audio's duration in seconds."""
    pcm, rate = read_wav(wav)
    pcm8 = resample(pcm, rate, 8000)
    write_rtp_pcap(pcap, pcm8, **kw)  # type: ignore[arg-type]
    return pcm8.size / 8000


_HEADERS = """\
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      Call-ID: [call_id]
      Max-Forwards: 70
      Contact: <sip:{caller}@[local_ip]:[local_port]>"""


_CALLER_BYE = """\
  <send retrans="500"><![CDATA[
      BYE sip:agent@[remote_ip]:[remote_port] SIP/2.0
{h}
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      CSeq: 2 BYE
      Content-Length: 0
  ]]></send>
  <recv response="200" crlf="true"/>"""

_AGENT_BYE = """\
  <recv request="BYE" timeout="{timeout}"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>"""


def _steps(steps: list[tuple[str, object]]) -> list[str]:
    """Scenario lines for ("pause", ms) | ("play", pcap path) steps."""
    body = []
    for kind, arg in steps:
        if kind == "pause":
            body.append(f'  <pause milliseconds="{int(arg)}"/>')  # type: ignore[call-overload]
        elif kind == "play":
            body.append(f'  <nop><action><exec play_pcap_audio="{arg}"/></action></nop>')
        else:
            raise ValueError(kind)
    return body


def caller_scenario(
    steps: list[tuple[str, object]],
    *,
    caller: str = "15551234567",
    hangup: str = "caller",
    bye_timeout_ms: int = 30000,
) -> str:
    """A SIPp UAC scenario: INVITE with PCMU/PCMA/telephone-event, ACK, then ``steps``
    (("pause", ms) | ("play", pcap path)), then either the caller's BYE (``hangup="caller"``)
    or waiting for the agent's BYE and answering it (``hangup="agent"``)."""
    h = _HEADERS.format(caller=caller)
    ending = (_CALLER_BYE if hangup == "caller" else _AGENT_BYE).format(h=h, timeout=bye_timeout_ms)
    body = _steps(steps)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="voice-worker caller">
  <send retrans="500"><![CDATA[
      INVITE sip:agent@[remote_ip]:[remote_port] SIP/2.0
{h}
      To: <sip:agent@[remote_ip]:[remote_port]>
      CSeq: 1 INVITE
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 8 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
      ACK sip:agent@[remote_ip]:[remote_port] SIP/2.0
{h}
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      CSeq: 1 ACK
      Content-Length: 0
  ]]></send>
{chr(10).join(body)}
{ending}
</scenario>
"""


def answering_scenario(steps: list[tuple[str, object]], *, bye_timeout_ms: int = 60000) -> str:
    """A SIPp UAS scenario: answer one INVITE (180, 200 with PCMU and telephone-event), then
    ``steps`` (("pause", ms) | ("play", pcap path)), then wait for the caller's BYE."""
    body = _steps(steps)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="voice-worker answering party">
  <recv request="INVITE" crlf="true"/>
  <send><![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0
  ]]></send>
  <send retrans="500"><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=ptime:20
  ]]></send>
  <recv request="ACK" crlf="true"/>
{chr(10).join(body)}
{_AGENT_BYE.format(timeout=bye_timeout_ms)}
</scenario>
"""


BUSY_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="voice-worker busy party">
  <recv request="INVITE" crlf="true"/>
  <send><![CDATA[
      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
  <recv request="ACK"/>
</scenario>
"""


def start_sipp_uas(scenario: str, port: int, workdir: Path, timeout: float = 120) -> Any:
    """SIPp answering one call on 127.0.0.1:``port``, in the background (``.wait()`` it)."""
    exe = shutil.which("sipp")
    if exe is None:
        raise RuntimeError("sipp is needed (apt-get install sip-tester)")
    xml = workdir / f"uas-{time.monotonic_ns()}.xml"
    xml.write_text(scenario)
    cmd = [
        exe, "-sf", str(xml), "-m", "1", "-i", "127.0.0.1", "-p", str(port),
        "-mi", "127.0.0.1", "-mp", str(free_udp_port() & ~1 or 16000),
        "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin", "-trace_err",
        "-error_file", str(workdir / "sipp-uas-errors.log"),
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@dataclass
class SippRun:
    returncode: int
    stdout: str
    stderr: str
    errors: str


def run_sipp(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *,
    calls: int = 1,
    rate: int = 1,
    timeout: float = 120,
) -> SippRun:
    """Run SIPp (``sipp``, Debian sip-tester) against ``target``; all calls must succeed."""
    exe = shutil.which("sipp")
    if exe is None:
        raise RuntimeError("sipp is needed (apt-get install sip-tester)")
    xml = workdir / f"scenario-{time.monotonic_ns()}.xml"
    xml.write_text(scenario)
    cmd = [
        exe, "-sf", str(xml), "-m", str(calls), "-l", str(calls), "-r", str(rate),
        "-i", "127.0.0.1", "-p", str(free_udp_port()),
        "-mi", "127.0.0.1", "-mp", str(free_udp_port() & ~1 or 16000),
        "-timeout", f"{int(timeout)}s", "-timeout_error", "-nostdin", "-trace_err",
        "-error_file", str(workdir / "sipp-errors.log"),
        f"{target[0]}:{target[1]}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout + 30)
    err_file = workdir / "sipp-errors.log"
    errors = err_file.read_text(errors="replace") if err_file.exists() else ""
    return SippRun(proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:], errors[-4000:])


class RawSip:
    """A bare UDP socket for sending hand-made (and broken) SIP messages."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = int(self.sock.getsockname()[1])

    def send(self, data: bytes | str, target: tuple[str, int]) -> None:
        self.sock.sendto(data.encode() if isinstance(data, str) else data, target)

    def recv_status(self, skip_provisional: bool = True) -> tuple[int, str]:
        """The next final response's status code and full text."""
        while True:
            data, _ = self.sock.recvfrom(65535)
            text = data.decode(errors="replace")
            first = text.split("\r\n", 1)[0].split(" ")
            code = int(first[1])
            if code >= 200 or not skip_provisional:
                return code, text

    def close(self) -> None:
        self.sock.close()


def invite(
    target: tuple[str, int],
    local_port: int,
    *,
    call_id: str,
    sdp: str | None = None,
    extra: str = "",
    branch: str = "z9hG4bK-test1",
    user: str = "agent",
) -> str:
    """A minimal INVITE from 127.0.0.1:``local_port``."""
    body = sdp or (
        "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    host, port = target
    return (
        f"INVITE sip:{user}@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch};rport\r\n"
        f"From: <sip:tester@127.0.0.1:{local_port}>;tag=t1\r\n"
        f"To: <sip:{user}@{host}:{port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:tester@127.0.0.1:{local_port}>\r\n{extra}"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


class SipCaller:
    """A scripted phone in Python: INVITE/ACK/BYE over UDP and mu-law RTP both ways, hearing
    the agent with a simple energy detector. Used by the SIP latency benchmark, where the
    caller must see when the agent's voice arrives; SIPp cannot report that."""

    VOICED_RMS = 300.0

    def __init__(self, target: tuple[str, int], user: str = "agent") -> None:
        self.target = target
        self.user = user
        self.sip = RawSip()
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.setblocking(False)
        self.rtp_port = int(self.rtp.getsockname()[1])
        self.remote_media: tuple[str, int] | None = None
        self.call_id = f"bench-{time.monotonic_ns()}"
        self.to_header = ""
        self.heard: list[np.ndarray] = []
        self.voiced_at: list[float] = []
        """Wall-clock arrival time of each voiced 20 ms frame from the agent."""
        self.digits_heard: list[str] = []
        """Keys the far end pressed (RFC 4733 events), in order."""
        self._event_ts: set[int] = set()
        self._seq = 1
        self._ts = 0

    def dial(self) -> None:
        offer = (
            "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
        )
        msg = invite(self.target, self.sip.port, call_id=self.call_id, sdp=offer, user=self.user)
        self.sip.send(msg, self.target)
        code, text = self.sip.recv_status()
        if code != 200:
            raise RuntimeError(f"call refused: {code}")
        fields = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (ln.partition(":") for ln in text.split("\r\n\r\n")[0].split("\r\n"))
        )
        self.to_header = fields["to"]
        body = text.split("\r\n\r\n", 1)[1]
        addr = next(ln.split()[2] for ln in body.split("\r\n") if ln.startswith("c="))
        port = next(int(ln.split()[1]) for ln in body.split("\r\n") if ln.startswith("m=audio"))
        self.remote_media = (addr, port)
        self.sip.send(self._request("ACK", 1), self.target)

    def _request(self, method: str, cseq: int) -> str:
        host, port = self.target
        return (
            f"{method} sip:{self.user}@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch=z9hG4bK{method}{cseq};rport\r\n"
            f"From: <sip:tester@127.0.0.1:{self.sip.port}>;tag=t1\r\nTo: {self.to_header}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )

    def hang_up(self) -> int:
        self.sip.send(self._request("BYE", 2), self.target)
        code, _ = self.sip.recv_status()
        return code

    def _drain(self) -> None:
        while True:
            try:
                data = self.rtp.recv(2048)
            except BlockingIOError:
                return
            if len(data) >= 16 and data[1] & 0x7F == 101:  # RFC 4733 telephone-event
                self._telephone_event(data)
                continue
            if len(data) <= 12 or data[1] & 0x7F != 0:
                continue
            pcm = g711_decode(data[12:], "ulaw")
            self.heard.append(pcm)
            if float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > self.VOICED_RMS:
                self.voiced_at.append(time.time())

    def _telephone_event(self, data: bytes) -> None:
        """A key the far end pressed: one per RTP timestamp, taken at its end packet."""
        ts = struct.unpack("!I", data[4:8])[0]
        event, flags = data[12], data[13]
        if flags & 0x80 and ts not in self._event_ts and event < 12:
            self._event_ts.add(ts)
            self.digits_heard.append("0123456789*#"[event])

    async def stream(self, pcm8k: np.ndarray) -> float:
        """Send audio at real-time pace (silence included); returns when the last frame left."""
        assert self.remote_media is not None
        pcm = np.concatenate([pcm8k, np.zeros((-pcm8k.size) % 160, np.int16)]).astype(np.int16)
        start = time.monotonic()
        for i in range(pcm.size // 160):
            payload = g711_encode(pcm[i * 160 : (i + 1) * 160], "ulaw")
            head = struct.pack("!BBHII", 0x80, 0, self._seq & 0xFFFF, self._ts, 0x5EED)
            self.rtp.sendto(head + payload, self.remote_media)
            self._seq += 1
            self._ts = (self._ts + 160) & 0xFFFFFFFF
            self._drain()
            await _sleep_until(start + (i + 1) * 0.02)
        return time.time()

    async def send_digit(self, digit: str) -> None:
        """One RFC 4733 telephone-event (payload type 101): 100 ms, then three end packets."""
        assert self.remote_media is not None
        event = "0123456789*#".index(digit)
        start = time.monotonic()
        for i in range(8):
            end = i >= 5
            duration = min(i + 1, 5) * 160
            payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
            marker = 0x80 if i == 0 else 0
            head = struct.pack("!BBHII", 0x80, marker | 101, self._seq & 0xFFFF, self._ts, 0x5EED)
            self.rtp.sendto(head + payload, self.remote_media)
            self._seq += 1
            self._drain()
            await _sleep_until(start + (i + 1) * 0.02)
        self._ts = (self._ts + 5 * 160) & 0xFFFFFFFF

    def requests(self) -> list[str]:
        """In-dialog requests the far end sent (BYE, REFER, ...), each answered: 200, or 202
        for a REFER followed by a NOTIFY saying the transfer target answered."""
        got = []
        self.sip.sock.setblocking(False)
        try:
            while True:
                try:
                    data, addr = self.sip.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                text = data.decode(errors="replace")
                if text.startswith("SIP/2.0"):
                    continue  # a response (to our NOTIFY)
                got.append(text)
                self.sip.sock.sendto(
                    _response(text, 202 if text.startswith("REFER") else 200), addr
                )
                if text.startswith("REFER"):
                    self._notify_transfer_done(addr)
        finally:
            self.sip.sock.settimeout(5)
        return got

    transfer_result = "200 OK"
    """What the NOTIFY after a REFER says the transfer target answered."""

    def _notify_transfer_done(self, addr: tuple[str, int]) -> None:
        body = f"SIP/2.0 {self.transfer_result}\r\n"
        host, port = self.target
        self.sip.sock.sendto((
            f"NOTIFY sip:{self.user}@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip.port};branch=z9hG4bKnotify{self._seq};rport\r\n"
            f"From: <sip:tester@127.0.0.1:{self.sip.port}>;tag=t1\r\nTo: {self.to_header}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: 3 NOTIFY\r\nMax-Forwards: 70\r\n"
            "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n"
            "Content-Type: message/sipfrag;version=2.0\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode(), addr)  # fmt: skip

    async def until_request(self, method: str, limit: float) -> str | None:
        """Stream silence until the far end sends ``method``; its text, or None."""
        deadline = time.time() + limit
        while time.time() < deadline:
            for req in self.requests():
                if req.startswith(method + " "):
                    return req
            await self.silence(0.1)
        return None

    async def silence(self, seconds: float) -> None:
        await self.stream(np.zeros(int(seconds * 8000), np.int16))

    async def wait_agent_quiet(self, quiet: float = 0.8, limit: float = 30.0) -> None:
        """Stream silence until the agent has said something and then been quiet a while."""
        deadline = time.time() + limit
        while time.time() < deadline:
            await self.silence(0.1)
            if self.voiced_at and time.time() - self.voiced_at[-1] > quiet:
                return
        raise TimeoutError("the agent never went quiet")

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()


def _response(request: str, code: int) -> bytes:
    """A response to ``request`` echoing its dialog headers."""
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    keep = [h for h in head if h.split(":", 1)[0].strip().lower()
            in ("via", "from", "to", "call-id", "cseq")]  # fmt: skip
    reason = {200: "OK", 202: "Accepted"}[code]
    return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(keep)
            + "\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip


async def _sleep_until(deadline: float) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
