"""The models a worker process shares across all of its calls, loaded once.

Heavy objects (Whisper, Kokoro, Silero, the end-of-turn model, the embedded LLM server) are
built here and handed to every session by :mod:`worker.session`; nothing else loads models.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livekit.agents import APIConnectionError
from livekit.agents import stt as agents_stt
from livekit.agents import tts as agents_tts
from livekit.agents import vad as agents_vad

from plugins.faster_whisper import STT as WhisperSTT
from plugins.faster_whisper import WhisperOptions
from plugins.faster_whisper.remote import RemoteSTT
from plugins.kokoro import TTS as KokoroTTS
from plugins.kokoro import KokoroOptions
from plugins.llama_cpp import WORDS_ONLY_GBNF, EmbeddedLLMServer
from plugins.vllm import LLM as OpenAICompatLLM
from plugins.vllm import LLMOptions, first_served_model

from . import assets
from .phrases import Phrases, fixed_lines
from .settings import Settings

if TYPE_CHECKING:
    from livekit.agents.inference import TurnDetector

    from infra.router import Router

logger = logging.getLogger("worker.models")

ALL_PARTS = ("vad", "turn", "stt", "tts", "llm")


@dataclass(frozen=True)
class Models:
    """Process-wide model instances and how long each took to load.

    Built once by :func:`load_models` and never changed: a call (or a LiveKit job) that needs
    something of its own derives a copy with :func:`dataclasses.replace`."""

    settings: Settings
    vad: agents_vad.VAD | None = None
    turn_detector: TurnDetector | None = None
    stt: WhisperSTT | None = None
    """Whisper in process: what sessions listen with, or the fallback of the STT server."""
    remote_stt: RemoteSTT | None = None
    """The shared STT server's client when ``stt.server_url`` is set."""
    tts: agents_tts.TTS | None = None
    """The configured engine: Kokoro in process or on a server, or Orpheus."""
    session_tts: agents_tts.TTS | None = None
    """What sessions speak with: ``tts`` behind a fallback adapter when a second engine exists."""
    session_stt: agents_stt.STT | None = None
    """What sessions listen with: the STT server with the local model as its fallback."""
    llm: OpenAICompatLLM | None = None
    embedded_llm: EmbeddedLLMServer | None = None
    router: Router | None = None
    """The GPU router when ``router.redis_url`` is set: LLM backends by voice."""
    phrases: Phrases | None = None
    """The fixed lines (greeting, goodbye, ...) in the sessions' voice, made at load."""
    load_seconds: dict[str, float] = field(default_factory=dict)
    described: dict[str, str] = field(default_factory=dict)

    @property
    def heard_by(self) -> agents_stt.STT | None:
        """The configured STT engine (the server's client, else Whisper in process)."""
        return self.remote_stt or self.stt

    @staticmethod
    @functools.cache
    def stock_vad() -> agents_vad.VAD:
        """Silero with the framework's default settings, for the stock turn profile (loaded
        on first use, once per process)."""
        from livekit.plugins import silero

        return silero.VAD.load()

    async def aclose(self) -> None:
        """Stop what this process started (the embedded LLM) and close the clients."""
        if self.llm is not None:
            await self.llm.aclose()
        if self.router is not None:
            await self.router.r.aclose()
        if self.embedded_llm is not None:
            self.embedded_llm.stop()


def load_vad(settings: Settings) -> agents_vad.VAD:
    from livekit.plugins import silero

    return silero.VAD.load(min_silence_duration=settings.turn.vad_min_silence)


def load_turn_detector() -> TurnDetector:
    """The local end-of-turn model; never the cloud one."""
    import livekit.local_inference as local_inference
    from livekit.agents.inference import TurnDetector

    local_inference.init_eot()  # the weights, once per process (~250 MB)
    return TurnDetector(version="v1-mini")


def load_stt(settings: Settings) -> WhisperSTT:
    s = settings.stt
    model = assets.resolve(s.model, settings.models_dir)
    return WhisperSTT(
        opts=WhisperOptions(
            model=model, language=s.language, device=s.device, compute_type=s.compute_type,
            cpu_threads=s.cpu_threads, beam_size=s.beam_size,
        ),
        interim_interval=s.interim_interval,
        min_silence=s.min_silence,
        early_final=s.early_final,
    )  # fmt: skip


def load_stt_engine(settings: Settings) -> agents_stt.STT:
    """The configured STT alone: the shared server's client, or Whisper in process."""
    if settings.stt.server_url:
        return RemoteSTT(url=settings.stt.server_url, language=settings.stt.language)
    return load_stt(settings)


def load_fallback_tts(settings: Settings) -> agents_tts.TTS | None:
    """Piper, when the `fallback` extra is installed (``tts.fallback`` auto) or asked for."""
    choice = settings.tts.fallback
    if choice == "none":
        return None
    try:
        from plugins.piper import TTS as PiperTTS

        return PiperTTS()
    except ImportError:
        if choice == "piper":
            raise ValueError(
                'tts.fallback is "piper" but piper-tts is not installed: '
                'pip install -e ".[fallback]"'
            ) from None
        logger.info("no fallback TTS (install the `fallback` extra for Piper)")
        return None


def _with_fallback(kind: str, engines: list[Any], vad: agents_vad.VAD | None) -> Any:
    """The framework's fallback adapter, with every switch logged and counted."""
    from livekit.agents import stt as agents_stt
    from livekit.agents import tts as agents_tts

    from .metrics import FALLBACKS

    if kind == "tts":
        adapter: Any = agents_tts.FallbackAdapter(engines)
    else:
        adapter = agents_stt.FallbackAdapter(engines, vad=vad)

    def changed(ev: Any) -> None:
        engine = getattr(ev, kind)
        name = f"{engine.provider}/{engine.model}"
        if ev.available:
            logger.info("%s engine %s is back", kind.upper(), name)
        else:
            FALLBACKS.labels(kind=kind, engine=name).inc()
            logger.warning("%s engine %s failed; using the next one", kind.upper(), name)

    adapter.on(f"{kind}_availability_changed", changed)
    return adapter


def load_tts(settings: Settings) -> agents_tts.TTS:
    s = settings.tts
    if s.engine == "orpheus":
        from plugins.orpheus import TTS as OrpheusTTS
        from plugins.orpheus import OrpheusOptions, WindowDecoder, load_snac

        if not s.orpheus_url and not settings.router.redis_url:
            raise ValueError("tts.engine orpheus needs tts.orpheus_url or router.redis_url")
        return OrpheusTTS(
            opts=OrpheusOptions(
                base_url=s.orpheus_url, voice=s.orpheus_voice, model=s.orpheus_model,
                sentences_per_request=s.orpheus_sentences,
            ),
            decoder=WindowDecoder(load_snac(s.snac), s.device),
        )  # fmt: skip
    if s.server_url:
        from plugins.kokoro.tts import RemoteTTS

        return RemoteTTS(url=s.server_url, voice=s.voice, speed=s.speed)
    model = _resolve_hub_file(assets.resolve(s.model, settings.models_dir))
    voices = assets.resolve(s.voices, settings.models_dir)
    return KokoroTTS(
        opts=KokoroOptions(
            model_path=model,
            voices_path=voices,
            voice=s.voice,
            speed=s.speed,
            lang=s.lang,
            threads=s.threads,
        )
    )


def _resolve_hub_file(value: str) -> str:
    """``owner/repo:file`` on a model hub, downloaded once by huggingface_hub."""
    if ":" in value and "/" in value.split(":", 1)[0] and not value.startswith("/"):
        from huggingface_hub import hf_hub_download

        repo, filename = value.split(":", 1)
        return str(hf_hub_download(repo, filename))
    return value


async def load_llm(settings: Settings) -> tuple[OpenAICompatLLM, EmbeddedLLMServer | None]:
    """The configured endpoint, or an embedded llama.cpp server when none is set."""
    s = settings.llm
    server: EmbeddedLLMServer | None = None
    routed = bool(settings.router.redis_url)
    base_url = s.base_url or (settings.router.default_url if routed else None)
    model = s.model
    if routed and not model:
        raise ValueError("router.redis_url is set: llm.model must name the model (or LoRA "
                         "voice) the router routes by")  # fmt: skip
    if routed and not base_url:
        base_url = ""  # every session resolves its node through the router
    elif not base_url:
        gguf = assets.resolve(s.embedded_model, settings.models_dir)
        model = model or s.embedded_model
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        server = EmbeddedLLMServer(
            gguf, alias=model, threads=s.embedded_threads,
            batch_threads=s.embedded_batch_threads, ctx=s.embedded_ctx,
            log_path=settings.data_dir / "embedded-llm.log", nice=s.embedded_nice,
        )  # fmt: skip
        await server.start()
        base_url = server.base_url
    elif model is None:
        try:
            model = await first_served_model(base_url, s.api_key.get_secret_value())
        except APIConnectionError as e:  # the worker still starts: calls get the apology
            logger.warning("%s; sending model name 'default' until llm.model is set", e)
            model = "default"
    assert model is not None  # a routed worker checked it above
    llm = OpenAICompatLLM(
        opts=LLMOptions(
            base_url=base_url, model=model, api_key=s.api_key.get_secret_value(),
            temperature=s.temperature, max_tokens=s.max_tokens,
            connect_timeout=s.connect_timeout, timeout=s.timeout,
            first_token_timeout=s.first_token_timeout,
            words_only_grammar=WORDS_ONLY_GBNF if server is not None else None,
        )
    )  # fmt: skip
    return llm, server


def make_router(settings: Settings) -> Router | None:
    """The GPU router when ``router.redis_url`` is set (its Redis client is bound to the loop
    that first uses it), else None."""
    url = settings.router.redis_url
    if not url:
        return None
    import redis.asyncio as aioredis

    from infra.router import Router

    r = settings.router
    # bounded: a Redis outage must reach the default node within the lookup's budget
    client = aioredis.from_url(
        url, socket_connect_timeout=r.lookup_timeout, socket_timeout=r.lookup_timeout
    )
    return Router(
        client, prefix=r.prefix, vnodes=r.vnodes, replicas=r.replicas,
        max_replicas=r.max_replicas, grow_above=r.grow_above,
    )  # fmt: skip


async def load_models(settings: Settings, parts: Iterable[str] = ALL_PARTS) -> Models:
    """Load the requested parts once, recording how long each took."""
    wanted = set(parts)
    got: dict[str, Any] = {}
    load_seconds: dict[str, float] = {}
    described: dict[str, str] = {}

    def timed(name: str, started: float, what: str) -> None:
        load_seconds[name] = time.perf_counter() - started
        described[name] = what
        logger.info("loaded %s (%s) in %.2fs", name, what, load_seconds[name])

    try:
        if "vad" in wanted:
            t = time.perf_counter()
            got["vad"] = load_vad(settings)
            timed("vad", t, "silero")
        if "turn" in wanted and settings.turn.turn_detector:
            t = time.perf_counter()
            got["turn_detector"] = load_turn_detector()
            timed("turn", t, "livekit turn-detector v1-mini (local)")
        if "stt" in wanted:
            t = time.perf_counter()
            got["stt"] = got["session_stt"] = load_stt(settings)
            if settings.stt.server_url:
                remote = RemoteSTT(url=settings.stt.server_url, language=settings.stt.language)
                got["remote_stt"] = remote
                got["session_stt"] = _with_fallback("stt", [remote, got["stt"]], got.get("vad"))
                timed("stt", t, f"STT server {settings.stt.server_url}, local fallback")
            else:
                timed("stt", t, f"faster-whisper {got['stt'].model}")
        if "tts" in wanted:
            await _load_speech(settings, got, timed)
        if "llm" in wanted:
            got["router"] = make_router(settings)
            t = time.perf_counter()
            got["llm"], got["embedded_llm"] = await load_llm(settings)
            where = (
                "embedded llama.cpp" if got["embedded_llm"]
                else "the GPU router's nodes" if got["router"] is not None
                else settings.llm.base_url
            )  # fmt: skip
            timed("llm", t, f"{got['llm'].model} via {where}")
            if got["embedded_llm"] is not None:
                from .agent import prime_llm_cache  # the agent builds the prompt (and imports us)

                t = time.perf_counter()
                await prime_llm_cache(settings.agent, got["llm"])
                logger.info(
                    "read the call prompt into the LLM cache in %.2fs", time.perf_counter() - t
                )
    except BaseException:
        await Models(settings=settings, **got).aclose()
        raise
    return Models(settings=settings, load_seconds=load_seconds, described=described, **got)


async def _load_speech(settings: Settings, got: dict[str, Any], timed: Any) -> None:
    """The TTS, its fallback, the fixed lines and the reply openers, into ``got``."""
    t = time.perf_counter()
    tts = got["tts"] = got["session_tts"] = load_tts(settings)
    second = load_fallback_tts(settings)
    if second is not None:
        got["session_tts"] = _with_fallback("tts", [tts, second], got.get("vad"))
    if settings.tts.engine == "orpheus":
        timed("tts", t, f"orpheus voice {settings.tts.orpheus_voice}")
    else:
        on = f" on {settings.tts.server_url}" if settings.tts.server_url else ""
        timed("tts", t, f"kokoro voice {settings.tts.voice}{on}")
    if settings.tts.cache_phrases and not settings.router.redis_url:
        # (with a router, Orpheus voices live on the session's node: nothing to share)
        t = time.perf_counter()
        got["phrases"] = Phrases(got["session_tts"])
        await got["phrases"].prepare(fixed_lines(settings.agent))
        logger.info("prepared the fixed lines in %.2fs", time.perf_counter() - t)
    if isinstance(tts, KokoroTTS):  # in process or on a server: openers from a piece cache
        tts.pieces.max_entries = settings.tts.piece_cache
        t = time.perf_counter()
        from .prompt import likely_openers

        openers = [*settings.tts.openers, *likely_openers(settings.agent)]
        made = await tts.prepare_pieces(openers)
        logger.info("prepared %d reply openers in %.2fs", made, time.perf_counter() - t)
