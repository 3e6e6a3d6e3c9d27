"""A caller in headless Chromium on the worker's own web page, driven over the DevTools protocol.

The page is the product's page, unchanged; before it loads, a probe is injected that
- hands the page a microphone made in Web Audio, into which the benchmark plays each caller
  line on demand (a fake capture file plays on its own clock, so a line could not wait for
  the previous reply to end); the rest is the browser's own path: Opus, WebRTC, the network;
- taps the agent's track as the browser receives it (after its jitter buffer) and stamps
  every 256-sample block with the agent's voice in it.
Times are the wall clock (``Date.now()``), the same clock the worker's records use on this
machine. The SIP caller's interface (``stream``, ``silence``, ``wait_agent_quiet``,
``voiced_at``) is kept so the same conversation script drives it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
]  # fmt: skip

PROBE = """
(() => {
  const probe = (window.__probe = { voiced: [], said: [], pcs: [] });
  const ctx = new AudioContext({ sampleRate: 48000 });
  const mic = ctx.createMediaStreamDestination();
  // a microphone never goes silent-by-absence: without a source the track sends nothing
  const floor = ctx.createConstantSource();
  floor.offset.value = 0;
  floor.connect(mic);
  floor.start();
  navigator.mediaDevices.getUserMedia = async () => { await ctx.resume(); return mic.stream; };
  window.__say = (b64, rate) => new Promise((resolve) => {
    const bin = atob(b64);
    const n = bin.length >> 1;
    const buf = ctx.createBuffer(1, n, rate);
    const ch = buf.getChannelData(0);
    for (let i = 0; i < n; i++) {
      let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      if (v >= 32768) v -= 65536;
      ch[i] = v / 32768;
    }
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(mic);
    src.onended = () => { const t = Date.now(); probe.said.push(t); resolve(t); };
    src.start();
  });
  const tap = (track) => {
    const node = ctx.createScriptProcessor(256, 1, 1);
    ctx.createMediaStreamSource(new MediaStream([track])).connect(node);
    const sink = ctx.createGain();
    sink.gain.value = 0;
    node.connect(sink).connect(ctx.destination);
    node.onaudioprocess = (e) => {
      const x = e.inputBuffer.getChannelData(0);
      let s = 0;
      for (let i = 0; i < x.length; i++) s += x[i] * x[i];
      if (Math.sqrt(s / x.length) > THRESHOLD) probe.voiced.push(Date.now());
    };
  };
  const Native = window.RTCPeerConnection;
  class Tapped extends Native {
    constructor(...args) {
      super(...args);
      probe.pcs.push(this);
      this.addEventListener("track", (e) => { if (e.track.kind === "audio") tap(e.track); });
    }
  }
  window.RTCPeerConnection = Tapped;
  // Chrome's own account of the agent's audio: mean jitter-buffer delay (ms) and loss
  window.__receiveStats = async () => {
    for (const pc of probe.pcs) {
      for (const r of (await pc.getStats()).values()) {
        if (r.type === "inbound-rtp" && r.kind === "audio" && r.jitterBufferEmittedCount) {
          return { jitter_buffer_ms: 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount,
                   packets_lost: r.packetsLost, concealed_samples: r.concealedSamples };
        }
      }
    }
    return null;
  };
})();
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("Chromium is needed for the browser transport (apt-get install chromium)")


class BrowserCaller:
    """One page, one call. ``async with BrowserCaller(url) as caller``: the page is open and
    its call connected; leaving the block closes the browser (the call ends with it)."""

    VOICED_RMS = 300.0 / 32768
    """The SIP caller's threshold, on Web Audio's float scale."""

    def __init__(self, url: str, rate: int = 48000) -> None:
        self.url = url
        self.rate = rate
        self.voiced_at: list[float] = []
        self.connected_at = 0.0
        self.receive_stats: dict[str, float] | None = None
        """Chrome's statistics of the agent's audio, read as the call ends."""
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-browser-", ignore_cleanup_errors=True)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> BrowserCaller:
        from plugins.net import free_port

        port = free_port()
        profile = Path(self._tmp.name)
        self._proc = self._launch(port, profile)
        self._http = aiohttp.ClientSession()
        target = await self._page_target(port)
        self._ws = await self._http.ws_connect(target, max_msg_size=0)
        await self._send("Page.enable")
        probe = PROBE.replace("THRESHOLD", repr(self.VOICED_RMS))
        await self._send("Page.addScriptToEvaluateOnNewDocument", source=probe)
        await self._send("Page.navigate", url=self.url)
        deadline = time.monotonic() + 30
        while await self._eval("document.getElementById('state')?.dataset.s") != "connected":
            if time.monotonic() > deadline:
                log = (profile / "chromium.log").read_text(errors="replace")[-1500:]
                raise TimeoutError(f"the page never connected: {log}")
            await asyncio.sleep(0.05)
        self.connected_at = time.time()
        return self

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.receive_stats = await self._eval("window.__receiveStats()")
        with contextlib.suppress(Exception):
            await self._eval("document.getElementById('hangup').click()")
            await asyncio.sleep(0.5)  # the hang-up message reaches the worker
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:  # Chromium and its helpers (renderer, crash handler)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._tmp.cleanup()

    @staticmethod
    def _launch(port: int, profile: Path) -> subprocess.Popen[bytes]:
        with open(profile / "chromium.log", "wb") as log:
            return subprocess.Popen(
                [chromium(), *FLAGS, f"--remote-debugging-port={port}",
                 f"--user-data-dir={profile / 'profile'}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip

    async def _page_target(self, port: int) -> str:
        assert self._http is not None
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t.get("type") == "page"]
                    if pages:
                        return str(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium's DevTools endpoint never answered")
            await asyncio.sleep(0.1)

    async def _send(self, method: str, **params: Any) -> Any:
        assert self._ws is not None
        msg_id = next(self._ids)
        await self._ws.send_json({"id": msg_id, "method": method, "params": params})
        async for msg in self._ws:
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result")
        raise ConnectionError("DevTools connection closed")

    async def _eval(self, expression: str) -> Any:
        result = await self._send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if result.get("exceptionDetails"):
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def _collect(self) -> None:
        """Move the probe's new voiced stamps into ``voiced_at`` (seconds)."""
        stamps = await self._eval("window.__probe.voiced.splice(0)")
        self.voiced_at.extend(t / 1000 for t in stamps or [])

    async def stream(self, pcm: np.ndarray) -> float:
        """Play ``pcm`` (int16 at ``self.rate``) into the page's microphone; returns when its
        last sample left the microphone, in ``time.time()`` seconds."""
        b64 = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
        ended = await self._eval(f"window.__say('{b64}', {self.rate})")
        await self._collect()
        return float(ended) / 1000

    async def silence(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._collect()

    async def wait_agent_quiet(self, quiet: float = 0.8, limit: float = 30.0) -> None:
        deadline = time.time() + limit
        while time.time() < deadline:
            await self.silence(0.1)
            if self.voiced_at and time.time() - self.voiced_at[-1] > quiet:
                return
        raise TimeoutError("the agent never went quiet")
