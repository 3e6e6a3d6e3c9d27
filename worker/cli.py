"""``python -m worker``: run the agent, fetch models, and debug one stage at a time.

Results go to standard output, logs and progress to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import assets, ops, records
from .settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from telephony.sip import SipServer

    from .local.server import LocalServer

logger = logging.getLogger("worker")


class CLIError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="models and call records (WORKER_DATA_DIR)")
    common.add_argument("--config", type=Path, help="TOML settings file (WORKER_CONFIG)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    p = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_ in (
        ("dev", "run the agent for development (local web page, or LiveKit if LIVEKIT_URL is set)"),
        ("start", "run the agent in production mode"),
    ):
        sp = sub.add_parser(name, parents=[common], help=help_)
        sp.add_argument(
            "--http",
            type=_host_port,
            metavar="HOST:PORT",
            help="address of the local page (default 127.0.0.1:8080)",
        )
        sp.add_argument(
            "--max-calls", type=int, help="calls at once over every transport (max_calls)"
        )
        sp.add_argument(
            "--sip",
            type=_host_port,
            metavar="HOST:PORT",
            help="also answer SIP calls (UDP) on this address, e.g. 127.0.0.1:5060",
        )

    sub.add_parser("console", parents=[common], help="chat with the agent in the terminal (text)")

    dl = sub.add_parser("download-files", parents=[common], help="fetch and check model assets")
    dl.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        choices=sorted(assets.ASSETS),
        help="also fetch an optional asset",
    )
    dl.add_argument("--all", action="store_true", help="fetch every known asset")
    dl.add_argument("--force", action="store_true", help="fetch again even if present")
    dl.add_argument("--verify", action="store_true", help="re-hash installed assets")

    sub.add_parser("check", parents=[common], help="load every model once and time it")

    ev = sub.add_parser(
        "eval", parents=[common], help="score the LLM on scripted text conversations"
    )
    ev.add_argument("file", type=Path, nargs="+", help="eval YAML file(s), e.g. tests/evals/*.yaml")
    ev.add_argument("--json", type=Path, metavar="OUT.json", help="write the results as JSON")

    tr = sub.add_parser("transcribe", parents=[common], help="speech to text of one WAV file")
    tr.add_argument("file", type=Path)

    say = sub.add_parser("say", parents=[common], help="text to speech into a WAV file")
    say.add_argument("text")
    say.add_argument("-o", "--output", type=Path, required=True)

    hp = sub.add_parser("harness", parents=[common], help="play a scripted caller into the agent")
    hp.add_argument("scenario", type=Path, nargs="+", help="scenario YAML file(s)")
    hp.add_argument(
        "--profile",
        action="append",
        choices=["default", "livekit-defaults"],
        help="turn profile; repeat to compare (default: default)",
    )
    hp.add_argument("--json", type=Path, metavar="OUT.json", help="write the results as JSON")
    hp.add_argument("--save-audio", type=Path, metavar="DIR", help="write what the caller heard")

    wb = sub.add_parser(
        "web", parents=[common], help="serve the LiveKit web client and its token endpoint"
    )
    wb.add_argument(
        "--http", type=_host_port, metavar="HOST:PORT",
        help="address of the page (default 127.0.0.1:8080)",
    )  # fmt: skip
    calls = sub.add_parser("calls", parents=[common], help="list recorded calls")
    calls.add_argument("--last", action="store_true", help="only the newest call")
    calls.add_argument("--json", action="store_true", help="print records as JSON")
    calls.add_argument(
        "--export", type=Path, metavar="DIR", help="write every call as DIR/<id>.json and .txt"
    )
    ops.add_parsers(sub, common)
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("faster_whisper", "aioice", "aiortc", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))
    # warns on every sentence that its word count differs after phonemisation; harmless
    logging.getLogger("phonemizer").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {"data_dir": args.data_dir, "log_level": args.log_level}
        if getattr(args, "http", None):
            host, port = args.http
            overrides["http"] = {"host": host, "port": port}
        if getattr(args, "max_calls", None):
            overrides["max_calls"] = args.max_calls
        if getattr(args, "sip", None):
            host, port = args.sip
            overrides["sip"] = {"listen": f"{host}:{port}"}
        settings = load_settings(args.config, **overrides)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    handler = _COMMANDS[args.command]
    from plugins.kokoro import UnknownVoiceError
    from plugins.llama_cpp import EmbeddedServerError

    try:
        return handler(settings, args)
    except (CLIError, ops.OpsError, assets.AssetError, UnknownVoiceError, EmbeddedServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # whoever read our output left (`calls | head`): stop quietly, as a filter does. The
        # process keeps Python's SIGPIPE handling (ignored, an error on the write): a worker
        # whose peer closes a socket must get an error, not be killed by the signal
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# --- commands -------------------------------------------------------------------------------


def cmd_download(settings: Settings, args: argparse.Namespace) -> int:
    names = list(assets.ASSETS) if args.all else assets.default_assets() + list(args.extra)
    models_dir = settings.models_dir
    print(f"model assets in {models_dir}", file=sys.stderr)
    bad = []
    for name in dict.fromkeys(names):
        assets.install(models_dir, name, force=args.force)
        if args.verify and not assets.verify(models_dir, name):
            bad.append(name)
    if bad:
        raise CLIError(f"assets failed verification: {', '.join(bad)}; rerun with --force")
    print("all model assets are in place", file=sys.stderr)
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    if settings.livekit.url:
        from . import livekit_worker

        livekit_worker.run(settings, dev=args.command == "dev")
        return 0
    return asyncio.run(_serve_local(settings))


async def _serve_local(settings: Settings) -> int:
    from .local.server import LocalServer
    from .models import load_models

    token = settings.http.token.get_secret_value()
    if not settings.http.loopback_only and not token:
        import secrets

        token = secrets.token_urlsafe(18)  # the page is reachable from elsewhere: lock it
    from .recording import prune

    gone = prune(settings.recordings_dir, settings.records.audio_retention_days)
    if gone:
        logger.info("deleted %d call recordings past their retention", gone)
    print("loading models...", file=sys.stderr)
    started = time.perf_counter()
    models = await load_models(settings)
    server = LocalServer(
        models,
        max_calls=settings.max_calls,
        token=token,
        ice_servers=settings.http.rtc_ice_servers(),
        allowed_origins=settings.http.allowed_origins,
    )
    from . import metrics

    metrics.count_calls_of(server.slots)
    sip: SipServer | None = None
    try:
        try:
            await server.start(settings.http.host, settings.http.port)
        except OSError as e:
            raise CLIError(
                f"cannot listen on {settings.http.host}:{settings.http.port}: {e.strerror}; "
                "pick another with --http HOST:PORT"
            ) from e
        if settings.sip.listen:
            sip = await _start_sip(settings, server)
        url = f"http://{settings.http.host}:{settings.http.port}/"
        if token:
            url += "?token=" + (token if not settings.http.token.get_secret_value() else "<token>")
        sip_note = f" SIP calls to sip:agent@{sip.address[0]}:{sip.address[1]}." if sip else ""
        print(
            f"ready in {time.perf_counter() - started:.1f}s. Open {url} in a browser and "
            f"press Connect (Ctrl+C to stop).{sip_note}",
            flush=True,
        )
        stop = asyncio.Event()
        drain = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(
            signal.SIGTERM, lambda: stop.set() if drain.is_set() else drain.set()
        )
        drain_task = asyncio.ensure_future(drain.wait())
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait({drain_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if drain.is_set() and not stop.is_set():
            await _drain(settings, server, sip, stop)
        drain_task.cancel()
        stop_task.cancel()
        print("stopping...", file=sys.stderr)
    finally:
        if sip is not None:
            await sip.stop()
        await server.stop()
        await models.aclose()
    return 0


async def _drain(
    settings: Settings, server: LocalServer, sip: SipServer | None, stop: asyncio.Event
) -> None:
    """SIGTERM: admit no new calls, let active ones finish for ``drain_timeout`` seconds,
    then have the agent say its closing line and end them. A second SIGTERM ends at once."""
    server.draining = True
    if sip is not None:
        sip.draining = True
    active = server.active_calls + (sip.active_calls if sip else 0)
    print(f"draining: {active} calls may go on for {settings.drain_timeout:.0f}s", file=sys.stderr)
    deadline = time.monotonic() + settings.drain_timeout
    while time.monotonic() < deadline and not stop.is_set():
        if server.active_calls + (sip.active_calls if sip else 0) == 0:
            return
        await asyncio.sleep(0.2)
    calls = server.calls() + (list(sip.calls.values()) if sip else [])
    for call in calls:
        call.closing.set()
    ends = [asyncio.ensure_future(c.ended.wait()) for c in calls]
    if ends:
        await asyncio.wait(ends, timeout=25)


async def _start_sip(settings: Settings, server: LocalServer) -> SipServer:
    from plugins.net import is_loopback
    from telephony.sip import SipServer

    cfg = settings.sip
    if not is_loopback(cfg.host) and not (cfg.username and cfg.password.get_secret_value()):
        logger.warning(
            "SIP on %s admits only %s without authentication; set sip.username/sip.password "
            "for callers elsewhere",
            cfg.host,
            ", ".join(cfg.allow),
        )
    sip = SipServer(cfg, on_call=server.run_phone_call, slots=server.slots)
    try:
        await sip.start()
    except OSError as e:
        raise CLIError(
            f"cannot listen for SIP on {cfg.host}:{cfg.port}: {e.strerror}; "
            "pick another with --sip HOST:PORT"
        ) from e
    return sip


def cmd_console(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(_console(settings))


async def _console(settings: Settings) -> int:
    """The real agent (instructions, facts, tools) in a text-only session."""
    from livekit.agents import AgentSession
    from livekit.agents.voice.run_result import ChatMessageEvent, FunctionCallEvent, RunResult

    from .agent import VoiceAgent
    from .evals import TRANSFER_TARGET, EvalCall
    from .models import load_models

    models = await load_models(settings, ("llm",))
    assert models.llm is not None
    call = EvalCall("console")
    agent = VoiceAgent(settings.agent, call=call, transfer_target=TRANSFER_TARGET)
    session: AgentSession[Any] = AgentSession(llm=models.llm)
    print(f"agent: {settings.agent.greeting}  (empty line or Ctrl+D to quit)", flush=True)
    await session.start(agent)
    loop = asyncio.get_running_loop()
    try:
        while not call.ended.is_set():
            line = await loop.run_in_executor(None, _read_line)
            if not line:
                break
            result: RunResult[None] = await session.run(user_input=line)
            for ev in result.events:
                if isinstance(ev, FunctionCallEvent):
                    print(f"  [{ev.item.name}({ev.item.arguments})]", flush=True)
                elif isinstance(ev, ChatMessageEvent) and ev.item.role == "assistant":
                    print(f"agent: {ev.item.text_content}", flush=True)
        for action, arg in call.actions:
            print(f"  [call {action}: {arg}]", flush=True)
    finally:
        await session.aclose()
        await models.aclose()
    return 0


def _read_line() -> str:
    try:
        return input("you: ").strip()
    except EOFError:
        return ""


def cmd_check(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(_check(settings))


async def _check(settings: Settings) -> int:
    from livekit.agents import llm

    from .models import load_models

    models = await load_models(settings)
    try:
        print(f"{'part':6} {'loaded':>8}  what")
        for name, secs in models.load_seconds.items():
            print(f"{name:6} {secs:7.2f}s  {models.described[name]}")
        assert models.tts is not None and models.heard_by is not None and models.llm is not None
        t = time.perf_counter()
        pcm, rate = await speak(models.tts, "The check is complete.")
        tts_s = time.perf_counter() - t
        t = time.perf_counter()
        heard = await recognize(models.heard_by, pcm, rate)
        stt_s = time.perf_counter() - t
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content="Say OK.")
        t = time.perf_counter()
        first: float | None = None
        model = models.llm
        if models.router is not None:  # the check's reply goes through the ring, as calls do
            from .session import routed_llm, session_route

            model = routed_llm(models, session_route(models, f"check-{os.getpid()}"))
        async with model.chat(chat_ctx=ctx) as stream:
            async for chunk in stream:
                if first is None and chunk.delta and chunk.delta.content:
                    first = time.perf_counter() - t
        print(f"tts    {tts_s:7.2f}s  synthesised {pcm.size / rate:.2f}s of audio")
        print(f"stt    {stt_s:7.2f}s  heard {heard!r}")
        print(f"llm    {first or 0:7.2f}s  to first token")
    finally:
        await models.aclose()
    return 0


async def speak(tts: Any, text: str) -> tuple[Any, int]:
    """Int16 samples and their rate for ``text``, through the framework's API (any engine)."""
    import numpy as np

    from plugins.audio import frame_samples

    async with tts.synthesize(text) as stream:
        frames = [ev.frame async for ev in stream]
    if not frames:
        raise CLIError("the TTS produced no audio")
    return np.concatenate([frame_samples(f) for f in frames]), frames[0].sample_rate


async def recognize(stt: Any, pcm: Any, rate: int) -> str:
    """The words in int16 samples, through the framework's API (any engine)."""
    from plugins.audio import make_frame

    event = await stt.recognize(make_frame(pcm, rate))
    return str(event.alternatives[0].text) if event.alternatives else ""


async def _closing(engine: Any, work: Any) -> Any:
    """Await ``work``, then close ``engine`` (its HTTP sessions) on the same loop."""
    try:
        return await work
    finally:
        await engine.aclose()


def cmd_transcribe(settings: Settings, args: argparse.Namespace) -> int:
    from plugins.audio import AudioFileError, read_wav

    from .models import load_stt_engine

    try:
        samples, rate = read_wav(args.file)
    except FileNotFoundError as e:
        raise CLIError(f"no such file: {args.file}") from e
    except AudioFileError as e:
        raise CLIError(str(e)) from e
    stt = load_stt_engine(settings)
    print(asyncio.run(_closing(stt, recognize(stt, samples, rate))))
    return 0


def cmd_say(settings: Settings, args: argparse.Namespace) -> int:
    from plugins.audio import write_wav

    from .models import load_tts

    text = args.text.strip()
    if not text or not any(c.isalnum() for c in text):
        raise CLIError("nothing to say: the text is empty")
    tts = load_tts(settings)
    started = time.perf_counter()
    pcm, rate = asyncio.run(_closing(tts, speak(tts, text)))
    write_wav(args.output, pcm, rate)
    print(
        f"wrote {args.output} ({pcm.size / rate:.2f}s of audio in "
        f"{time.perf_counter() - started:.2f}s)"
    )
    return 0


def cmd_harness(settings: Settings, args: argparse.Namespace) -> int:
    from .harness import ScenarioError, load_scenario

    try:
        scenarios = [load_scenario(p) for p in args.scenario]
    except ScenarioError as e:
        raise CLIError(str(e)) from e
    return asyncio.run(_harness(settings, scenarios, args.profile or ["default"], args))


async def _harness(settings: Settings, scenarios: list[Any], profiles: list[Any], args: Any) -> int:
    from plugins.audio import write_wav

    from .harness import ScenarioError, format_table, run_scenario
    from .models import load_models

    models = await load_models(settings)
    results = []
    try:
        for scenario in scenarios:
            for profile in profiles:
                try:
                    result = await run_scenario(models, scenario, profile)
                except ScenarioError as e:
                    raise CLIError(str(e)) from e
                heard = result.pop("heard")
                if args.save_audio:
                    args.save_audio.mkdir(parents=True, exist_ok=True)
                    write_wav(args.save_audio / f"{scenario.name}.{profile}.wav", heard, 24000)
                print(format_table(result), flush=True)
                results.append(result)
    finally:
        await models.aclose()
    if args.json:
        args.json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from .evals import EvalError, load_eval

    for path in args.file:
        try:
            load_eval(path)
        except (EvalError, ValueError) as e:
            raise CLIError(str(e)) from e
    return asyncio.run(_eval(settings, args))


async def _eval(settings: Settings, args: argparse.Namespace) -> int:
    from .evals import format_report, run_eval
    from .models import load_models

    models = await load_models(settings, ("llm",))
    reports = []
    try:
        for path in args.file:
            print(f"running {path}", file=sys.stderr, flush=True)
            report = await run_eval(models, path)
            print(format_report(report), flush=True)
            reports.append(report)
    finally:
        await models.aclose()
    met = sum(r.met for r in reports)
    total = sum(r.total for r in reports)
    print(f"total {met}/{total} = {met / total if total else 0:.0%}", flush=True)
    if args.json:
        out = {"model": reports[0].model if reports else None, "met": met, "total": total,
               "files": [r.as_dict() for r in reports]}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_calls(settings: Settings, args: argparse.Namespace) -> int:
    if args.export:
        try:
            written = records.export(settings.calls_dir, args.export)
        except OSError as e:
            raise CLIError(f"cannot export to {args.export}: {e.strerror or e}") from e
        print(f"exported {len(written)} calls to {args.export}", file=sys.stderr)
        return 0
    paths = list(records.iter_calls(settings.calls_dir))
    if not paths:
        print(f"no calls recorded in {settings.calls_dir}", file=sys.stderr)
        return 1 if args.last else 0
    if args.last:
        paths = paths[-1:]
    if args.json:
        if args.last:
            print(json.dumps(records.read_records(paths[0]), indent=2, ensure_ascii=False))
        else:
            print(json.dumps([_summary_dict(records.summarize(p)) for p in paths], indent=2))
        return 0
    print(f"{'call id':26} {'transport':11} {'started':19} {'turns':>5}  ended")
    for p in paths:
        s = records.summarize(p)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at))
        print(f"{s.call_id:26} {s.transport:11} {when:19} {s.turns:5}  {s.ended or '(live)'}")
    return 0


def _summary_dict(s: records.CallSummary) -> dict[str, Any]:
    return {
        "call_id": s.call_id, "path": str(s.path), "transport": s.transport,
        "started_at": s.started_at, "turns": s.turns, "ended": s.ended,
    }  # fmt: skip


def cmd_web(settings: Settings, _args: argparse.Namespace) -> int:
    lk = settings.livekit
    if not (lk.url and lk.api_key and lk.api_secret):
        raise CLIError("set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET for the web client")
    if not (settings.models_dir / "web/livekit-client.umd.js").exists():
        raise CLIError(
            "the page needs the LiveKit browser SDK: "
            "run `python -m worker download-files --with livekit-client`"
        )
    return asyncio.run(_serve_web(settings))


async def _serve_web(settings: Settings) -> int:
    from .web.server import WebClientServer

    server = WebClientServer(settings)
    try:
        await server.start(settings.http.host, settings.http.port)
    except OSError as e:
        raise CLIError(f"cannot listen on {settings.http.host}:{settings.http.port}: {e}") from e
    print(f"open http://{settings.http.host}:{settings.http.port}/ (Ctrl+C to stop)", flush=True)
    await ops.serve_until_signalled(server.stop)
    return 0


_COMMANDS = {
    "dev": cmd_dev,
    "start": cmd_dev,
    "console": cmd_console,
    "download-files": cmd_download,
    "check": cmd_check,
    "transcribe": cmd_transcribe,
    "say": cmd_say,
    "calls": cmd_calls,
    "web": cmd_web,
    "harness": cmd_harness,
    "eval": cmd_eval,
    **ops.COMMANDS,
}
