"""Runs llama.cpp's OpenAI-compatible server as a child process on 127.0.0.1.

Used when no LLM endpoint is configured, so a laptop with no GPU still has an LLM. The server
gets a free loopback port, is polled until it answers, and is stopped (SIGTERM, then SIGKILL)
when the worker exits; on Linux it also gets SIGTERM if the worker dies without cleaning up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from ..net import free_port
from ..vllm.log import logger

WORDS_ONLY_GBNF = "root ::= [^{<] [^<]*"
"""A reply that neither opens as a JSON tool call nor holds a ``<tool_call>`` tag."""


@dataclass(frozen=True)
class PromptEval:
    cached_tokens: int
    """Prompt tokens reused from the previous request's cache."""
    evaluated_tokens: int
    prompt_ms: float


_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt")
_FULL_HIT = "Llama.generate: full prompt already cached"
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")


def parse_prompt_evals(log: str) -> list[PromptEval]:
    """llama-cpp-python's verbose lines: a prefix hit (if any), then the prompt eval time.

    A request whose whole prompt is the one before it logs "full prompt already cached" and
    re-reads only its last token: all the previous prompt but that token came from the cache.
    """
    out: list[PromptEval] = []
    cached = 0
    for line in log.splitlines():
        if m := _PREFIX_HIT.search(line):
            cached = int(m[1])
        elif _FULL_HIT in line and out:
            cached = out[-1].cached_tokens + out[-1].evaluated_tokens - 1
        elif m := _PROMPT_EVAL.search(line):
            out.append(PromptEval(cached, int(m[2]), float(m[1])))
            cached = 0
    return out


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started; the message says why."""


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the worker process dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _lower_priority(nice: int) -> None:
    """In the child: run below the worker, so speech synthesis wins the cores when both want
    them and the LLM writes ahead only with what synthesis leaves.

    The child leads a session of its own, which Linux schedules as its own *autogroup*:
    there a plain nice value only ranks the group's own threads against each other, so the
    group's nice is set as well (``/proc/self/autogroup``; absent when autogroups are off,
    and then the plain nice is what counts)."""
    if nice <= 0:
        return
    with contextlib.suppress(OSError):
        os.nice(nice)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
        f.write(str(nice))


class EmbeddedLLMServer:
    """A llama.cpp server process serving one GGUF under one model alias."""

    def __init__(
        self,
        model: str,
        *,
        alias: str = "qwen2.5-0.5b",
        threads: int = 2,
        batch_threads: int | None = None,
        ctx: int = 4096,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        nice: int = 19,
    ) -> None:
        self._model = model
        self._nice = nice
        self._alias = alias
        self._threads = threads
        self._batch_threads = batch_threads or threads
        self._ctx = ctx
        self._host = host
        self._port = 0
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/v1"

    @property
    def alias(self) -> str:
        return self._alias

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _command(self) -> list[str]:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as e:
            raise EmbeddedServerError(
                "the embedded LLM needs llama-cpp-python[server]; install it with "
                "`pip install -e '.[embedded-llm]'` or set WORKER_LLM__BASE_URL to a vLLM server"
            ) from e
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--host", self._host, "--port", str(self._port),
            "--model_alias", self._alias,
            "--n_threads", str(self._threads), "--n_threads_batch", str(self._batch_threads),
            # verbose: the server logs, per request, how much of the prompt came from its
            # cache and how long the rest took (prompt_evals reads it back)
            "--n_ctx", str(self._ctx), "--verbose", "True",
            # by default a new request ends the one being streamed: with two calls on one
            # worker, each call's request cut the other's reply short. A reply nobody wants
            # any more (barge-in, a dropped speculation) ends when its client disconnects.
            "--interrupt_requests", "False",
        ]  # fmt: skip
        if ":" in self._model and not Path(self._model).exists():
            repo, filename = self._model.split(":", 1)
            cmd += ["--hf_model_repo_id", repo, "--model", filename]
        else:
            cmd += ["--model", self._model]
        return cmd

    async def start(self, ready_within: float = 60.0) -> None:
        """Start the process and wait until it serves its model list."""
        if self._proc is not None:
            return
        self._port = free_port(self._host)
        await self._spawn(ready_within)
        self._watch = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Restart a server that died (on the same port, so the base URL stays valid), with a
        growing pause between restarts; calls meanwhile get the agent's apology."""
        pause = 0.5
        while True:
            await asyncio.sleep(0.5)
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            logger.warning("embedded LLM server died (code %s); restarting", proc.returncode)
            if proc.returncode == -signal.SIGSEGV and "AMX_INT8 = 1" in self.cpu_features():
                logger.error(
                    "this llama.cpp build uses AMX, whose kernels crash on some Intel CPUs; "
                    "reinstall it with ./scripts/setup.sh, which builds it without AMX"
                )
            self._proc = None
            try:
                await self._spawn(60.0)
                self.restarts += 1
                pause = 0.5
            except (EmbeddedServerError, OSError) as e:
                logger.error("embedded LLM server restart failed: %s", e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    def _child_setup(self) -> None:
        _die_with_parent()
        _lower_priority(self._nice)

    async def _spawn(self, ready_within: float) -> None:
        cmd = self._command()
        log: Any = subprocess.DEVNULL
        if self._log_file is not None:  # a restart: the dead process's log handle
            self._log_file.close()
        if self._log_path is not None:
            log = self._log_file = open(self._log_path, "ab")  # noqa: ASYNC230 (quick, local)
        logger.info("starting embedded LLM server on %s (%s)", self.base_url, self._model)
        self._proc = subprocess.Popen(  # noqa: ASYNC220 (fork+exec; we do not wait on it)
            cmd,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=self._child_setup,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + ready_within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise EmbeddedServerError(
                        f"embedded LLM server exited with code {self._proc.returncode}"
                        + (f"; see {self._log_path}" if self._log_path else "")
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(
                        f"{self.base_url}/models", timeout=aiohttp.ClientTimeout(total=1)
                    ) as r:
                        if r.status == 200:
                            logger.info("embedded LLM server ready (pid %s)", self._proc.pid)
                            return
                await asyncio.sleep(0.2)
        self._terminate()
        raise EmbeddedServerError(f"embedded LLM server not ready after {ready_within:.0f}s")

    def cpu_features(self) -> str:
        """The CPU features the server's llama.cpp build uses, as it logged them at start
        ("AVX2 = 1 | ..."); empty without ``log_path`` or before the server logged them."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        found = re.findall(r"^CPU : (.*)$", self._log_path.read_text(errors="replace"), re.M)
        return found[-1].strip() if found else ""

    def prompt_evals(self) -> list[PromptEval]:
        """Per request, in order: how much of the prompt came from the server's cache and how
        long reading the rest took, as the server itself logged it (needs ``log_path``)."""
        if self._log_path is None or not self._log_path.exists():
            return []
        return parse_prompt_evals(self._log_path.read_text(errors="replace"))

    def stop(self, grace: float = 3.0) -> None:
        """Stop the supervisor and the process group, politely first."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._terminate(grace)

    def _terminate(self, grace: float = 3.0) -> None:
        proc, self._proc = self._proc, None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        logger.info("embedded LLM server stopped")

    def kill(self) -> None:
        """Kill at once (tests of a dying endpoint use this)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
