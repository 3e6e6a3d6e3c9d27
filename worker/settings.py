"""The worker's one typed settings object.

Values come, highest priority first, from: explicit overrides (CLI flags), environment
variables (``WORKER_`` prefix, ``__`` between a section and its field, e.g.
``WORKER_LLM__BASE_URL``), an optional TOML file (``WORKER_CONFIG`` or ``--config``), then the
defaults documented here. The LiveKit connection uses LiveKit's own variable names
(``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``). No other module reads
``os.environ`` for configuration.
"""

from __future__ import annotations

import contextvars
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from plugins.kokoro.tts import SPEED_RANGE
from plugins.net import is_loopback
from telephony.sip_settings import SIPSettings
from worker.facts import BusinessFacts, load_facts
from worker.turns.backchannel import DEFAULT_BACKCHANNELS, OVER_REPLY_PROMPT


def _default_data_dir() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "voice-worker"


class HTTPSettings(BaseModel):
    """The embedded web server (local page, WebRTC offers, health, metrics)."""

    host: str = Field("127.0.0.1", description="Address to bind; loopback unless told otherwise.")
    port: int = Field(8080, description="TCP port of the local page.")
    token: SecretStr = Field(
        SecretStr(""),
        description="Access token for the page, offers and metrics; generated at startup when "
        "the host is not loopback and none is set.",
    )
    ice_servers: list[str] = Field(
        default_factory=list,
        description="STUN/TURN URLs for browser calls (`stun:host:3478`, `turn:host:3478`); empty "
        "by default, so a call contacts nothing outside the machine. Set them only when browsers "
        "reach the worker through NAT.",
    )
    ice_username: str = Field("", description="Username for the TURN servers in `ice_servers`.")
    ice_credential: SecretStr = Field(
        SecretStr(""), description="Credential for the TURN servers in `ice_servers`."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Other origins (`https://app.example.com`) whose pages may start calls; by "
        "default only the worker's own page may.",
    )

    @property
    def loopback_only(self) -> bool:
        """Whether the page is reachable from this machine only."""
        return is_loopback(self.host)

    @field_validator("ice_servers")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return urls

    def rtc_ice_servers(self) -> list[Any]:
        """The ICE servers as aiortc takes them (the TURN credentials on turn: URLs only)."""
        from aiortc import RTCIceServer

        out = []
        for url in self.ice_servers:
            if url.startswith("turn"):
                secret = self.ice_credential.get_secret_value()
                out.append(RTCIceServer(url, username=self.ice_username, credential=secret))
            else:
                out.append(RTCIceServer(url))
        return out


class AgentSettings(BaseModel):
    """What the agent says and how it behaves."""

    instructions: str = Field(
        "You are a friendly voice assistant on a phone line. Answer in one or two short "
        "sentences of plain spoken English, without lists, markdown or emoji. Say times and "
        "numbers the way people say them, like nine thirty pm or twenty dollars.",
        description="How the agent speaks and behaves; the facts and tool guidance for the "
        "call are added after it (`worker/prompt.py`).",
    )
    facts: BusinessFacts | None = Field(
        None,
        description="The business's facts: a YAML file's path, or an inline table with "
        "`business`, `kind`, `hours`, `booking` and `facts` (see `tests/evals/*.facts.yaml`). "
        "Rendered into the prompt; the booking tool checks its rules.",
    )
    greeting: str = Field(
        "Hello! How can I help you today?",
        description="First thing the agent says when a call starts; empty for none.",
    )
    apology: str = Field(
        "Sorry, I'm having trouble thinking right now. Could you say that again?",
        description="Spoken when the LLM fails, so the caller never hears silence.",
    )
    goodbye: str = Field(
        "Thank you for calling. Goodbye!",
        description="Said before the agent hangs up (its end-call tool); empty to just hang up.",
    )
    closing: str = Field(
        "I'm sorry, I have to end our call now. Please call back in a moment. Goodbye.",
        description="Said to callers still on the line when a shutdown's drain time runs out.",
    )
    dtmf_gap: float = Field(
        1.5, description="Seconds after the last key press before the digits reach the LLM."
    )
    keypad_tool: bool = Field(
        False,
        description="On phone calls, offer the LLM a tool that presses keys (DTMF), e.g. for "
        "an outbound call into an automated menu. Off by default: a small model does better "
        "with fewer tools.",
    )
    transfer_notice: str = Field(
        "Please hold while I transfer you.",
        description="Said before a transfer to `sip.transfer_target`.",
    )

    guided_tools: bool | None = Field(
        None,
        description="Pick the tool a caller's words ask for in code (a person, goodbye, a "
        "booking with a day or time) and have the model fill in its arguments under a "
        "grammar: small models miss or invent tool calls. Off: the model decides alone. "
        "Unset: on for the embedded LLM, off with `llm.base_url`.",
    )

    @field_validator("facts", mode="before")
    @classmethod
    def _facts_file(cls, v: Any) -> Any:
        if isinstance(v, str | Path) and str(v).strip():
            return load_facts(Path(v).expanduser())
        return v or None


class STTSettings(BaseModel):
    """Speech to text (faster-whisper)."""

    server_url: str | None = Field(
        None,
        description="A shared STT server (`python -m worker stt-server`, "
        "`ws://host:8091`); unset decodes in this process.",
    )
    model: str = Field(
        "tiny.en",
        description="`tiny.en` or `base` (offline assets), a local CTranslate2 model folder, "
        "or a Hugging Face model name.",
    )
    language: str = Field("en", description="Language code passed to Whisper.")
    device: str = Field("cpu", description="`cpu` or `cuda`.")
    compute_type: str = Field("int8", description="CTranslate2 compute type.")
    cpu_threads: int = Field(2, description="Threads for decoding on the CPU.")
    beam_size: int = Field(1, description="Beam size; 1 is greedy and fastest.")
    interim_interval: float = Field(
        0.6, description="Seconds between interim re-decodes of the growing utterance."
    )
    min_silence: float = Field(
        0.25,
        description="Silence (s) that ends an utterance for the final transcript; the turn "
        "itself is decided by endpointing, so short is safe and fast.",
    )
    early_final: float = Field(
        0.03,
        ge=0.0,
        description="Silence (s) after which the final decode starts, before `min_silence` "
        "closes the utterance; dropped if the caller goes on. 0 waits for `min_silence`. "
        "0.03 starts it on the VAD's first silent window: ~70 ms sooner than 0.1, for a word "
        "error of 0.209 against 0.208 (16 kHz) and 0.237 against 0.234 (G.711) on tuning voices.",
    )


class TTSSettings(BaseModel):
    """Text to speech: Kokoro-82M (default) or Orpheus on a vLLM server."""

    fallback: Literal["auto", "piper", "none"] = Field(
        "auto",
        description="Second engine when the first fails: `piper` (the `fallback` extra); "
        "`auto` uses it when installed.",
    )
    engine: Literal["kokoro", "orpheus"] = Field(
        "kokoro", description="`kokoro` (in process or a Kokoro server) or `orpheus` (vLLM)."
    )
    cache_phrases: bool = Field(
        True,
        description="Synthesise the fixed lines (greeting, goodbye, transfer notice, closing) "
        "once at load and replay them, so a call's greeting starts at once.",
    )
    piece_cache: int = Field(
        256,
        ge=0,
        description="Short reply pieces (up to six words) Kokoro keeps once made, per voice: "
        'a reply opening with a phrase said before ("Sure,", "I\'m sorry,") plays at once. '
        "0 turns the cache off.",
    )
    openers: list[str] = Field(
        default_factory=lambda: [
            "Sure,", "Sure.", "Yes,", "Yes.", "No,", "Okay,", "Of course.", "Of course,",
            "Certainly!", "Sorry,", "I'm sorry,", "Great!", "Thank you!", "You're welcome!",
            "Absolutely!", "Hello!",
        ],
        description="Reply openers synthesised into the piece cache at load, besides the first "
        "words of the prompt's example replies (which the LLM imitates).",
    )  # fmt: skip
    orpheus_url: str | None = Field(
        None, description="Orpheus's OpenAI-compatible base URL; or set `router.redis_url`."
    )
    orpheus_voice: str = Field("tara", description="Speaker name in the Orpheus prompt.")
    orpheus_model: str | None = Field(
        None, description="Model or LoRA voice name sent to vLLM (default: the voice)."
    )
    orpheus_sentences: int = Field(
        1, ge=1, le=5, description="Sentences per Orpheus request (more: more expressive)."
    )
    snac: str = Field(
        "hubertsiuzdak/snac_24khz", description="SNAC 24 kHz weights: a folder or hub name."
    )
    device: str = Field("cpu", description="Where SNAC decodes: `cpu` or `cuda`.")
    server_url: str | None = Field(
        None,
        description="A shared Kokoro server (`python -m worker tts-server`); unset "
        "synthesises in this process.",
    )
    model: str = Field(
        "kokoro-82m",
        description="`kokoro-82m` (offline int8 ONNX asset), a local .onnx path, or "
        "`owner/repo:file.onnx` on Hugging Face.",
    )
    voices: str = Field(
        "kokoro-voices",
        description="`kokoro-voices` (offline asset) or a local .npz/.bin voices file.",
    )
    voice: str = Field("af_heart", description="Kokoro voice name.")
    speed: float = Field(1.0, description="Speaking rate, 0.5 to 2.0.")
    lang: str = Field("en-us", description="espeak-ng language for phonemisation.")
    threads: int = Field(
        0,
        ge=0,
        description="Threads synthesising with Kokoro; 0 lets onnxruntime take one per core "
        "(see the thread budget in docs/settings.md).",
    )

    @field_validator("speed")
    @classmethod
    def _speed_range(cls, v: float) -> float:
        low, high = SPEED_RANGE
        if not low <= v <= high:
            raise ValueError(f"tts.speed must be between {low} and {high}")
        return v


class LLMSettings(BaseModel):
    """The LLM, through an OpenAI-compatible endpoint (vLLM in production)."""

    base_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL, e.g. `http://gpu-1:8000/v1`. Unset: the "
        "worker starts the embedded llama.cpp server.",
    )
    model: str | None = Field(
        None,
        description="Model (or LoRA adapter) name sent to the server; unset: the embedded "
        "model's name, or the first model the server lists.",
    )
    api_key: SecretStr = Field(SecretStr(""), description="Bearer key for the endpoint.")
    temperature: float = Field(
        0.0, description="Sampling temperature; 0 (greedy) keeps a small model to its facts."
    )
    max_tokens: int = Field(
        80,
        description="Cap on tokens per reply: a spoken reply is one or two sentences (about "
        "40 tokens); the cap only stops a runaway.",
    )
    connect_timeout: float = Field(2.0, description="Seconds to open a connection.")
    timeout: float = Field(10.0, description="Seconds between tokens before a reply fails.")
    first_token_timeout: float = Field(
        30.0,
        description="Seconds to the first token before a reply fails: long enough for the "
        "server to read a prompt it has not cached.",
    )
    max_retries: int = Field(0, description="Retries of a failed request before apologising.")
    embedded_model: str = Field(
        "qwen2.5-0.5b",
        description="GGUF for the embedded server: `qwen2.5-0.5b` (offline asset, default), "
        "`qwen2.5-1.5b` or `smollm2` (offline assets, `download-files --with NAME`), a local "
        "path, or `owner/repo:file.gguf` on Hugging Face.",
    )
    embedded_threads: int = Field(
        2,
        description="CPU threads generating tokens in the embedded server. Both cores: the "
        "words before the reply's first piece come ~35% faster, and once synthesis starts the "
        "server, niced, yields the cores to it anyway.",
    )
    embedded_batch_threads: int = Field(
        2,
        description="CPU threads reading the prompt in the embedded server: prompt reading "
        "happens while synthesis waits for the first words, so it may take both cores.",
    )
    embedded_ctx: int = Field(4096, description="Context length of the embedded server.")
    prefill_while_speaking: bool = Field(
        True,
        description="Have the LLM server read the caller's words (one-token requests on the "
        "interim transcripts) while they are still talking, so the reply's request finds most "
        "of its prompt cached.",
    )
    embedded_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="How far below the worker the embedded server runs (Unix nice): speech "
        "synthesis of the reply's first words then gets the cores first (on 2 cores a piece "
        "took 1.17 s beside the LLM writing at nice 0, 0.59 s at nice 10, 0.48 s at nice 19, "
        "as alone); 0 shares them evenly.",
    )


class TurnSettings(BaseModel):
    """Turn-taking: endpointing, speculation in the snooze window, barge-in."""

    profile: Literal["default", "livekit-defaults"] = Field(
        "default",
        description="`default` (ours) or `livekit-defaults` (the framework's stock turn "
        "handling, for comparison).",
    )
    endpointing_mode: Literal["fixed", "dynamic"] = Field(
        "fixed",
        description="`fixed` waits between the min and max delay; `dynamic` adapts the delay "
        "to the caller's pauses.",
    )
    min_endpointing_delay: float = Field(
        1.0,
        description="Minimum silence (s) after the VAD's last speech before a turn can be "
        "committed. The reply is ready ~0.6 s after the caller stops (speculation, cached "
        "openers), so this is when it plays: at 0.4 s and at 0.8 s the end-of-turn model's "
        "false 'finished' on a 0.45 s pause after 'I would like to book a table' was answered "
        "in 2 of 3 harness runs, at 1.0 s in none. Lower it for snappier replies where callers "
        "rarely pause mid-sentence.",
    )
    max_endpointing_delay: float = Field(
        1.2,
        description="Longest wait (s) when the end-of-turn model thinks the caller goes on. "
        "Longer lets callers think aloud; shorter answers sooner. 1.2 s rather than 1.0: the "
        "VAD notices a caller going on ~0.3 s late, so 1.0 s answered into 0.8 s pauses "
        "(benchmarks/end_of_turn.py).",
    )
    turn_detector: bool = Field(True, description="Use the local end-of-turn model (v1-mini).")
    text_veto: bool = Field(
        True,
        description="Hold the turn (wait `text_hold_delay`) when the transcript ends on a word "
        "no sentence ends on ('for', 'the', 'and', 'um'), whatever the end-of-turn model "
        "heard. On the held-back callers of benchmarks/end_of_turn.py it cut the replies into "
        "0.4-0.8 s pauses from 22% to 7% (16 kHz), 20% to 9% (8 kHz), at no extra wait.",
    )
    text_hold_delay: float = Field(
        1.5,
        description="Longest wait (s) when the words show the caller is mid-sentence "
        "(`text_veto`); longer than `max_endpointing_delay` because the words are surer than "
        "the audio model and the VAD takes ~0.3 s to notice the caller going on.",
    )
    vad_min_silence: float = Field(
        0.3, description="Silence (s) after which the VAD reports the end of speech."
    )
    speculate: bool = Field(
        True,
        description="Start the LLM and the first sentence's TTS inside the snooze window; "
        "cancelled at once when the caller resumes.",
    )
    pause_after: float = Field(
        0.06,
        description="Caller speech (s) over the agent that pauses playout (barge-in, step 1).",
    )
    resume_after: float = Field(
        0.6,
        description="Silence (s) after a pause with no interrupting words before playout resumes.",
    )
    backchannels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BACKCHANNELS),
        description="Phrases that, said over the agent, resume playout instead of interrupting.",
    )
    backchannel_max_seconds: float = Field(
        1.5,
        ge=0.0,
        description="A sound over the agent at most this long (s, VAD padding included), with "
        'at most three words and no cue like "wait" or "no", resumes playout when it sounds '
        "like a listed phrase (`backchannel_max_distance`) or Whisper was unsure of it "
        "(`backchannel_max_confidence`), however it was spelt; 0 trusts the words alone.",
    )
    backchannel_max_distance: float = Field(
        0.45,
        ge=0.0,
        le=1.0,
        description="How far (edit distance over length, 0-1) such a short sound's letters may "
        'be from a listed phrase and still count as one ("Mm-hums", "Uh-hi"); 0 is off.',
    )
    backchannel_max_confidence: float = Field(
        0.0,
        ge=0.0,
        le=1.01,
        description="Whisper's confidence below which such a short sound counts as a "
        'backchannel whatever its words; 0 (off): short answers ("Two.") are as unsure. The '
        "three limits were chosen on the tuning voices of `benchmarks/backchannel_signals.py`"
        " (seconds: 95% of backchannels fit; the rest: most resumed, no extra interruption "
        "or common short answer let through).",
    )
    backchannel_prompt: str = Field(
        OVER_REPLY_PROMPT,
        description="Text Whisper reads before a sound heard over the agent's reply, so it "
        "spells short answers as said (both backchannels and floor-taking words); empty to "
        "decode as any other utterance. For other languages, write its own short answers.",
    )


class TwilioSettings(BaseModel):
    """Twilio Media Streams at ``/twilio/media`` on the worker's HTTP server."""

    auth_token: SecretStr = Field(
        SecretStr(""),
        description="Twilio auth token; when set, `X-Twilio-Signature` is required and checked.",
    )
    public_url: str | None = Field(
        None,
        description="The wss:// URL Twilio connects to, if a proxy changes it (signatures are "
        "computed over it).",
    )


class RecordsSettings(BaseModel):
    """What is kept of each call."""

    redact_numbers: bool = Field(
        False, description="Mask card and phone numbers in stored transcripts."
    )
    audio: bool = Field(False, description="Also record both sides of each call to WAV.")
    audio_retention_days: float = Field(
        7.0, gt=0, description="Recordings older than this are deleted at startup."
    )


class RouterSettings(BaseModel):
    """Route LLM (and Orpheus) requests by voice to GPU nodes registered in Redis."""

    redis_url: str | None = Field(
        None, description="Redis holding the ring, e.g. `redis://redis:6379/0`; unset: off."
    )
    prefix: str = Field("router", description="Key prefix in Redis.")
    vnodes: int = Field(100, ge=1, description="Virtual nodes per GPU node on the ring.")
    replicas: int = Field(1, ge=1, description="Nodes per voice by default.")
    max_replicas: int = Field(4, ge=1, description="Most nodes a busy voice grows to.")
    grow_above: int = Field(
        120, ge=1,
        description="Lookups a minute for a voice above which it gains a replica (a call makes "
        "about 12: `docs/scaling.md` sizes it).",
    )  # fmt: skip
    default_url: str | None = Field(
        None,
        description="Base URL (`http://gpu-0:8000/v1`) used while Redis is unreachable or no "
        "node serves the voice; unset: those calls hear the apology.",
    )
    adapters_dir: Path | None = Field(
        None,
        description="The LoRA voices' folder (one sub-folder per voice, a shared volume): "
        "the default `--adapters` of `python -m infra.router node`.",
    )
    lookup_timeout: float = Field(
        1.0, gt=0, description="Seconds a router lookup in Redis may take before the default."
    )
    load_timeout: float = Field(
        30.0, gt=0, description="Seconds a session waits for its node to load a LoRA voice."
    )


class LiveKitSettings(BaseModel):
    """LiveKit server connection; unset URL means embedded local mode."""

    url: str | None = Field(None, description="LIVEKIT_URL, e.g. `wss://lk.example.com`.")
    api_key: str | None = Field(None, description="LIVEKIT_API_KEY.")
    api_secret: SecretStr | None = Field(None, description="LIVEKIT_API_SECRET.")
    agent_name: str = Field("voice-agent", description="Name for explicit dispatch.")
    outbound_trunk: str | None = Field(
        None, description="LIVEKIT_OUTBOUND_TRUNK: outbound SIP trunk ID for placed calls."
    )
    transfer_target: str | None = Field(
        None, description="Number or SIP URI the agent transfers phone callers to."
    )
    warm_transfer: bool = Field(
        False, description="Offer the LLM a warm transfer (dial, brief, hand over) as well."
    )
    public_url: str | None = Field(
        None, description="The wss:// URL browsers use, if it differs from LIVEKIT_URL."
    )
    token_ttl: int = Field(
        600, ge=30, le=86400, description="Seconds a web caller's access token is valid."
    )
    greet_timeout: float = Field(
        60.0, description="Seconds to wait for a phone caller's call to become active."
    )
    voicemail_message: str = Field(
        "Hello, this is the voice assistant returning your call. Please call us back at your "
        "convenience. Goodbye.",
        description="Left on an answering machine when an outbound call reaches one.",
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535,
        description="Prometheus `/metrics` of a LiveKit worker, on `http.host` (0: off).",
    )  # fmt: skip
    http_port: int = Field(
        8081, ge=0, le=65535,
        description="The framework's health and worker page of a LiveKit worker, on `http.host`.",
    )  # fmt: skip
    resume_lost_calls: bool = Field(
        True,
        description="If the worker dies mid-call, ask LiveKit for another agent to carry on "
        "the call (with the recent turns); off, or when none joins, the room is deleted.",
    )
    resume_wait: float = Field(
        15.0, gt=0, description="Seconds for another agent to join a lost call before hang-up."
    )
    resume_greeting: str = Field(
        "Sorry, we were cut off for a moment. I'm back. What were you saying?",
        description="What the agent that takes over a lost call says first.",
    )

    @property
    def api_url(self) -> str:
        """The server's HTTP API address, from ``url`` (ws:// or wss://); "" when unset."""
        return (self.url or "").replace("wss://", "https://").replace("ws://", "http://")


class Settings(BaseSettings):
    """Everything the worker can be told. See docs/settings.md (generated from these fields)."""

    model_config = SettingsConfigDict(
        env_prefix="WORKER_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Models, call records and caches (`WORKER_DATA_DIR`, `--data-dir`).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR` (`--log-level`)."
    )
    max_calls: int = Field(
        4, ge=1,
        description="Calls one worker takes at once over every transport (web, Twilio, SIP, "
        "LiveKit; `--max-calls`); beyond it callers are refused, and a LiveKit worker reports "
        "itself full.",
    )  # fmt: skip
    drain_timeout: float = Field(
        300.0, ge=0,
        description="After SIGTERM, seconds active calls may go on before the agent says "
        "`agent.closing` and ends them; no new calls are admitted meanwhile.",
    )  # fmt: skip
    http: HTTPSettings = HTTPSettings()
    agent: AgentSettings = AgentSettings()
    stt: STTSettings = STTSettings()
    tts: TTSSettings = TTSSettings()
    llm: LLMSettings = LLMSettings()
    turn: TurnSettings = TurnSettings()
    twilio: TwilioSettings = TwilioSettings()
    sip: SIPSettings = SIPSettings()
    router: RouterSettings = RouterSettings()
    records: RecordsSettings = RecordsSettings()
    livekit: LiveKitSettings = LiveKitSettings()

    @model_validator(mode="after")
    def _guided_tools_default(self) -> Settings:
        if self.agent.guided_tools is None:  # the embedded model is a small one
            self.agent.guided_tools = self.llm.base_url is None
        return self

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def calls_dir(self) -> Path:
        return self.data_dir / "calls"

    @property
    def recordings_dir(self) -> Path:
        """Where call audio goes when ``records.audio`` is on."""
        return self.data_dir / "recordings"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings, _LiveKitEnvSource(settings_cls)]
        path = _config_file.get() or os.environ.get("WORKER_CONFIG")
        if path:
            check_toml(Path(path))  # a clear error, not the TOML library's own
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class SettingsError(ValueError):
    """A settings file or value that cannot be used, with a message for humans."""


_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "config_file", default=None
)
"""The settings file ``load_settings`` was given (``--config``); else ``WORKER_CONFIG``."""


LIVEKIT_ENV = {
    "url": "LIVEKIT_URL",
    "api_key": "LIVEKIT_API_KEY",
    "api_secret": "LIVEKIT_API_SECRET",
    "agent_name": "LIVEKIT_AGENT_NAME",
    "outbound_trunk": "LIVEKIT_OUTBOUND_TRUNK",
}
"""``settings.livekit`` fields also read from LiveKit's conventional variable names."""


class _LiveKitEnvSource(PydanticBaseSettingsSource):
    """Maps LiveKit's conventional variables onto ``settings.livekit``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {k: os.environ[v] for k, v in LIVEKIT_ENV.items() if os.environ.get(v)}
        return {"livekit": found} if found else {}


def check_toml(path: Path) -> dict[str, Any]:
    """Parse a settings file, turning every failure into a :class:`SettingsError`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SettingsError(f"settings file not found: {path}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"settings file {path} is not valid TOML: {e}") from e
    return data


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, with an explicit config file and CLI overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    token = _config_file.set(config)
    try:
        return Settings(**clean)
    except SettingsError:
        raise
    except ValueError as e:
        raise SettingsError(str(e)) from e
    finally:
        _config_file.reset(token)
