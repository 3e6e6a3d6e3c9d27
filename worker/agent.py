"""The agent: instructions and greeting from settings, a spoken apology on LLM failure, and the
words half of barge-in.

Barge-in works in two steps. The session pauses playout on the first VAD frames of caller
speech over the agent (``interruption.min_duration`` in :mod:`worker.session`). Words then
decide, here in ``stt_node``: while a reply is active, a transcript that is only a backchannel
("uh-huh", "okay") is held back from the session, so no turn is committed and playout resumes
after ``turn.resume_after``, exactly as for a cough; any other words pass through, and the
framework cuts the reply and keeps in the history only what the caller heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from datetime import date
from typing import Any

from livekit import rtc
from livekit.agents import (
    Agent,
    APIConnectOptions,
    APIError,
    RunContext,
    StopResponse,
    function_tool,
    llm,
    stt,
)
from livekit.agents.types import FlushSentinel
from livekit.agents.voice import SpeechHandle
from livekit.agents.voice.agent import ModelSettings

from plugins.audio import PHONE_KEYS
from plugins.faster_whisper.stt import decode_prompt
from plugins.lk_private import current_speech_handle_id
from plugins.vllm import LLM as OpenAICompatLLM
from telephony.call import Call

from .booking import BookingDecision, check_booking
from .facts import BusinessFacts
from .phrases import Phrases
from .prompt import build_instructions, example_turns, forced_tool, turn_note
from .settings import AgentSettings
from .turns import BackchannelPolicy, SpeculationTracker
from .turns.detector import TextVetoTurnDetector

logger = logging.getLogger("worker.agent")

_TRANSCRIPTS = (
    stt.SpeechEventType.INTERIM_TRANSCRIPT,
    stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
    stt.SpeechEventType.FINAL_TRANSCRIPT,
)

_WARM_UP_CONN = APIConnectOptions(max_retry=0, timeout=30.0)
"""The cache warm-up is only an optimisation: one try, never retried over a dead server."""


def _tool_names(tools: list[llm.Tool]) -> list[str]:
    return [t.info.name for t in tools if isinstance(t, llm.FunctionTool | llm.RawFunctionTool)]


class VoiceAgent(Agent):
    """A phone/web voice agent. Never leaves the caller in silence when the LLM fails."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        backchannels: BackchannelPolicy | None = None,
        speculation: SpeculationTracker | None = None,
        turn_veto: TextVetoTurnDetector | None = None,
        call: Call | None = None,
        transfer_target: str | None = None,
        warm_transfer: bool = False,
        keypad: bool = False,
        phrases: Phrases | None = None,
        prefill: bool = False,
    ) -> None:
        tools = []
        if call is not None:
            tools.append(self._end_call_tool())
            if keypad:
                tools.append(self._keypad_tool())
            if transfer_target:
                tools.append(self._transfer_tool())
                if warm_transfer:
                    tools.append(self._warm_transfer_tool())
        if settings.facts is not None and settings.facts.booking is not None:
            tools.append(self._booking_tool(settings.facts))
        names = [t.info.name for t in tools]
        super().__init__(instructions=build_instructions(settings, names), tools=tools)
        self._examples = example_turns(settings, names)
        self._settings = settings
        self._call = call
        self._phrases = phrases or Phrases(None)
        self._transfer_target = transfer_target
        self._digits = ""
        self._digit_timer: asyncio.TimerHandle | None = None
        self._backchannels = backchannels
        self._speculation = speculation
        self._turn_veto = turn_veto
        self._prefill = prefill
        self._prefilling: asyncio.Task[None] | None = None
        self.prefills = 0
        """Requests that had the LLM read the caller's words while they were still talking."""
        self.llm_failures = 0
        self.on_backchannel: Callable[[str], None] | None = None

    def _say(self, text: str, **kwargs: Any) -> SpeechHandle:
        """Say a fixed line, from its prepared audio when there is some."""
        return self._phrases.say(self.session, text, **kwargs)

    # -- call control the LLM (or code) can use ----------------------------------------------

    async def end_call(self) -> None:
        """Say goodbye, let it play out, then hang up (a SIP call gets a BYE)."""
        if self._call is None:
            return
        if self._settings.goodbye:
            handle = self._say(self._settings.goodbye, allow_interruptions=False)
            await handle.wait_for_playout()
        logger.info("agent ends the call")
        await self._call.hangup("agent_hangup")

    async def transfer(self, target: str | None = None) -> str:
        """Cold-transfer the caller; returns what to tell the LLM if it did not work."""
        target = target or self._transfer_target
        if self._call is None or not target:
            return "No transfer destination is configured; tell the caller you cannot transfer."
        if self._settings.transfer_notice:
            handle = self._say(self._settings.transfer_notice, allow_interruptions=False)
            await handle.wait_for_playout()
        try:
            await self._call.transfer(target)
        except Exception as e:  # any transport failure is the caller's bad news, not a crash
            logger.warning("transfer to %s failed: %s", target, e)
            return "The transfer failed; apologise and offer to help another way."
        return "The caller was transferred."

    async def warm_transfer(self, target: str | None = None) -> str:
        """Bring a colleague into the call, brief them on it, then leave them with the caller."""
        target = target or self._transfer_target
        if self._call is None or not target:
            return "No transfer destination is configured; tell the caller you cannot transfer."
        handle = self._say(self._settings.transfer_notice, allow_interruptions=False)
        await handle.wait_for_playout()

        async def brief() -> None:
            said = [
                m.text_content
                for m in self.session.history.items
                if isinstance(m, llm.ChatMessage) and m.role == "user" and m.text_content
            ]
            who = f" from {self._call.caller}" if self._call and self._call.caller else ""
            text = f"Hi, this is the assistant. I have a caller{who} on the line."
            if said:
                text += f" They said: {said[-1]}"
            text += " I'll hand over to you now."
            await self.session.say(text, allow_interruptions=False).wait_for_playout()

        try:
            await self._call.warm_transfer(target, brief)
        except Exception as e:  # the caller stays with the agent if the colleague never answers
            logger.warning("warm transfer to %s failed: %s", target, e)
            return "The colleague could not be reached; apologise and offer to help another way."
        return "The caller is now talking to a colleague."

    # -- key presses -------------------------------------------------------------------------

    def dtmf(self, digit: str) -> None:
        """A key press: into the conversation once the caller stops pressing (``#`` ends the
        entry at once)."""
        if self._digit_timer is not None:
            self._digit_timer.cancel()
            self._digit_timer = None
        if digit != "#":
            self._digits += digit
            self._digit_timer = asyncio.get_running_loop().call_later(
                self._settings.dtmf_gap, self._flush_digits
            )
        else:
            self._flush_digits()

    def _flush_digits(self) -> None:
        digits, self._digits = self._digits, ""
        self._digit_timer = None
        if digits:
            self.session.generate_reply(
                user_input=f"[The caller pressed {' '.join(digits)} on the keypad]"
            )

    def _end_call_tool(self) -> Any:
        async def end_call(context: RunContext) -> None:
            """End the phone call. Use it when the caller says goodbye or asks to hang up."""
            context.disallow_interruptions()
            await context.wait_for_playout()
            await self.end_call()

        return function_tool(end_call)

    def _keypad_tool(self) -> Any:
        async def press_keys(context: RunContext, keys: str) -> str:
            """Press keys on the phone keypad (digits 0-9, * and #), for example to choose an
            option in an automated phone menu."""
            await context.wait_for_playout()
            return await self.press_keys(keys)

        return function_tool(press_keys)

    async def press_keys(self, keys: str) -> str:
        """Send ``keys`` as DTMF on the call; what happened, for the LLM."""
        digits = "".join(k for k in keys if k in PHONE_KEYS)
        if self._call is None or not digits:
            return "No keys were pressed: give digits 0-9, * or #."
        try:
            await self._call.send_dtmf(digits)
        except Exception as e:  # a transport that cannot send: tell the model, not the caller
            logger.warning("pressing %s failed: %s", digits, e)
            return "The keys could not be pressed on this call."
        return f"Pressed {' '.join(digits)}."

    def _transfer_tool(self) -> Any:
        async def transfer_to_human(context: RunContext) -> str:
            """Transfer the caller to a human colleague. Use it when the caller asks for a
            person or you cannot help."""
            await context.wait_for_playout()
            return await self.transfer()

        return function_tool(transfer_to_human)

    def _warm_transfer_tool(self) -> Any:
        async def warm_transfer_to_human(context: RunContext) -> str:
            """Bring a human colleague into the call and introduce the caller to them first.
            Use it when the caller needs a person and should not have to repeat themselves."""
            await context.wait_for_playout()
            return await self.warm_transfer()

        return function_tool(warm_transfer_to_human)

    def _booking_tool(self, facts: BusinessFacts) -> Any:
        rules = facts.booking
        assert rules is not None
        party = rules.max_party is not None

        async def make_booking(day: str, time: str, party_size: int) -> str:
            """Book for the caller. Always call this before saying a booking is made.

            Args:
                day: The weekday, or today or tomorrow.
                time: The time, like 7 pm or 19:30.
                party_size: How many people.
            """
            decision = check_booking(facts, day, time, party_size, today=date.today())
            logger.info("booking %s %s %s: %s", day, time, party_size, decision.message)
            if self.on_booking is not None:
                self.on_booking(decision)
            return decision.message

        async def make_appointment(day: str, time: str) -> str:
            """Book for the caller. Always call this before saying a booking is made.

            Args:
                day: The weekday, or today or tomorrow.
                time: The time, like 10 am or 14:30.
            """
            return await make_booking(day, time, 1)

        tool = make_booking if party else make_appointment
        return function_tool(tool, name="make_booking")

    on_booking: Callable[[BookingDecision], None] | None = None
    """Told of every booking decision (the eval and the call record listen)."""

    _warm: asyncio.Task[None] | None = None
    _warm_sent = False
    _replying = False
    """Set by the first reply: a warm-up not yet sent by then is not sent at all."""
    voicemail: str | None = None
    """Set when an outbound call reached an answering machine: leave this and hang up."""
    before_greeting: Callable[[], Awaitable[bool]] | None = None
    """Awaited before the greeting (a phone call being answered, voicemail detection); False:
    nobody is there to greet, so the call ends."""

    _gated = False

    async def on_enter(self) -> None:
        if self.before_greeting is not None:
            self._gated = True  # words heard meanwhile ("Hello?") get no reply of their own
            try:
                answered = await self.before_greeting()
                # and what is still being heard of them is dropped, not answered after
                with contextlib.suppress(RuntimeError):
                    self.session.clear_user_turn()
            finally:
                self._gated = False
            if not answered:
                if self._call is not None:
                    await self._call.hangup("never_answered")
                return
        if self.voicemail is not None:
            await self.session.say(self.voicemail, allow_interruptions=False).wait_for_playout()
            if self._call is not None:
                await self._call.hangup("voicemail_left")
            return
        greeting = None
        if self._settings.greeting:
            greeting = self._say(self._settings.greeting, allow_interruptions=True)
        self._warm = asyncio.create_task(self._warm_llm_cache(greeting))

    async def on_user_turn_completed(
        self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage
    ) -> None:
        if self._gated:
            raise StopResponse()

    async def llm_cache_warm(self) -> None:
        """Wait until the warm-up request of :meth:`on_enter` has finished."""
        if self._warm is not None:
            await asyncio.wait({self._warm})

    async def _settle_warm_up(self) -> None:
        """Before a reply's request: the warm-up must not reach the server after it. The
        embedded server ends the request it is streaming when another arrives (llama.cpp's
        ``interrupt_requests``), so a late warm-up cut the caller's first reply to nothing.
        One already sent is waited for: the reply would queue behind it at the server anyway
        and then finds the prompt it read in the cache."""
        self._replying = True
        task = self._warm
        if task is None or task.done():
            return
        if not self._warm_sent:
            task.cancel()
            return
        await asyncio.wait({task}, timeout=_WARM_UP_CONN.timeout)

    async def _warm_llm_cache(self, greeting: SpeechHandle | None = None) -> None:
        """Have the LLM server read this call's prompt (instructions, tools, greeting) once
        the greeting is out, so the first turn finds it cached like every later one. After
        the greeting: on two cores, reading a cold prompt would slow its synthesis.

        The request is the first turn's prompt minus the caller's words, built the way the
        framework builds it, so the server's prefix cache matches it token for token.
        """
        model = self.session.llm
        if not isinstance(model, OpenAICompatLLM):
            return
        if greeting is not None:
            with contextlib.suppress(Exception):
                await greeting.wait_for_playout()
            if greeting.interrupted:  # the caller is talking: leave the cores to listening
                return
        if self._replying:  # a reply's own request reads the prompt now
            return
        self._warm_sent = True
        await self._send_warm_up(model, self.chat_ctx.copy())

    async def _send_warm_up(
        self, model: OpenAICompatLLM, ctx: llm.ChatContext, *, greeting: bool = True
    ) -> None:
        """Send ``ctx`` (instructions and history) as the next turn would send it, the
        greeting included, for one token: the server keeps what it read in its cache."""
        said = [m.text_content for m in ctx.messages() if m.role == "assistant"]
        if greeting and self._settings.greeting and self._settings.greeting not in said:
            # the framework adds the greeting to the history once it has played, which may
            # be just before or just after this runs: the turn's prompt has it once
            ctx.add_message(role="assistant", content=self._settings.greeting)
        tools = [t for t in self.tools if isinstance(t, llm.Tool)]
        ctx = self._request_ctx(ctx, _tool_names(tools))
        try:
            async with model.chat(
                chat_ctx=ctx,
                tools=tools,
                extra_kwargs={"max_tokens": 1},
                conn_options=_WARM_UP_CONN,
            ) as stream:
                async for _ in stream:
                    pass
        except Exception as e:  # only an optimisation: the turn itself reports failures
            logger.debug("warming the LLM cache failed: %s", e)

    def _prefill_words(self, words: str) -> None:
        """While the caller is still talking, have the LLM server read the turn so far.

        The turn's request is the history, then the caller's words, then their note; the
        server keeps what it read and reuses the longest common start. So reading the words
        heard so far (for one token) while the caller speaks leaves only the last words, the
        note and the reply's opening to read once they stop: ~10 tokens instead of ~20, about
        0.1 s off the first token on 2 cores. At most one such request is in flight per call,
        none while a reply plays (then the words are a barge-in, not a turn), and it runs at
        the server's priority, below the STT's interim decodes.
        """
        model = self.session.llm
        words = words.strip().rstrip(".…").strip()
        if (
            not isinstance(model, OpenAICompatLLM)
            or len(words.split()) < 3
            or (self._prefilling is not None and not self._prefilling.done())
            or self._reply_active()
            or self._gated
        ):
            return
        ctx = self.chat_ctx.copy()
        ctx.add_message(role="user", content=words)
        self.prefills += 1
        self._prefilling = asyncio.create_task(self._send_warm_up(model, ctx, greeting=False))

    def _reply_active(self) -> bool:
        speech = self.session.current_speech
        return speech is not None and not speech.done() and not speech.interrupted

    async def stt_node(
        self, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings
    ) -> AsyncGenerator[stt.SpeechEvent | str, None]:
        """The default STT node, minus backchannels heard over an active reply."""
        policy = self._backchannels
        if policy is not None and policy.prompt:
            # the stream the default node opens reads this: sounds over the reply are decoded
            # leaning toward the short answers callers give there
            prompt = policy.prompt
            decode_prompt.set(lambda: prompt if self._reply_active() else None)
        events: Any = Agent.default.stt_node(self, audio, model_settings)
        async for ev in events:
            if self._turn_veto is not None and isinstance(ev, stt.SpeechEvent):
                # the end-of-turn decision reads the newest words (the preflight comes first)
                if ev.type == stt.SpeechEventType.START_OF_SPEECH:
                    self._turn_veto.note("")
                elif ev.type in _TRANSCRIPTS and ev.alternatives:
                    self._turn_veto.note(ev.alternatives[0].text)
            if (
                self._prefill
                and isinstance(ev, stt.SpeechEvent)
                and ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT
                and ev.alternatives
            ):
                self._prefill_words(ev.alternatives[0].text)
            if self._speculation is not None and isinstance(ev, stt.SpeechEvent):
                if ev.type == stt.SpeechEventType.PREFLIGHT_TRANSCRIPT and ev.alternatives:
                    self._speculation.preflight = ev.alternatives[0].text
                elif ev.type == stt.SpeechEventType.START_OF_SPEECH:
                    self._speculation.preflight = None
            if (
                self._backchannels is not None
                and isinstance(ev, stt.SpeechEvent)
                and ev.type
                in (
                    stt.SpeechEventType.INTERIM_TRANSCRIPT,
                    stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
                    stt.SpeechEventType.FINAL_TRANSCRIPT,
                )
                and ev.alternatives
                and self._reply_active()
                and self._backchannels.is_backchannel(
                    ev.alternatives[0].text,
                    # our STT gives the seconds of audio the words came from, and its confidence
                    seconds=ev.alternatives[0].end_time - ev.alternatives[0].start_time or None,
                    confidence=ev.alternatives[0].confidence,
                )
            ):
                if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    logger.debug("backchannel over the reply: %r", ev.alternatives[0].text)
                    if self.on_backchannel is not None:
                        self.on_backchannel(ev.alternatives[0].text)
                continue
            if (
                self._backchannels is not None
                and isinstance(ev, stt.SpeechEvent)
                and ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT
                and ev.alternatives
                and len(ev.alternatives[0].text.split()) >= 2
                and self._reply_active()
            ):
                # words that are no backchannel, while the caller is still talking: cut now
                # rather than at the final transcript
                speech = self.session.current_speech
                if speech is not None and speech.allow_interruptions:
                    logger.debug("interrupting on interim words %r", ev.alternatives[0].text)
                    speech.interrupt()
            yield ev

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncGenerator[llm.ChatChunk | str | FlushSentinel, None]:
        """The default LLM node, with each caller turn's note (`prompt.turn_note`) in place
        and the LLM's failure turned into a short apology."""
        names = _tool_names(tools)
        said = [  # the caller's own words, before the notes go in
            m.text_content or ""
            for m in chat_ctx.items
            if isinstance(m, llm.ChatMessage) and m.role == "user"
        ]
        last = chat_ctx.items[-1] if chat_ctx.items else None
        caller_spoke_last = isinstance(last, llm.ChatMessage) and last.role == "user"
        chat_ctx = self._request_ctx(chat_ctx, names)
        if self._settings.guided_tools and names:  # None only before Settings resolves it
            # no tool the words ask for, or a tool has just answered: reply in words
            choice: llm.ToolChoice = "none"
            chosen = forced_tool(names, said) if caller_spoke_last else None
            if chosen is not None:
                logger.debug("the caller's words ask for %s", chosen)
                choice = {"type": "function", "function": {"name": chosen}}
            model_settings = ModelSettings(tool_choice=choice)
        await self._settle_warm_up()
        produced = False
        handle_id = current_speech_handle_id()
        stream: AsyncIterable[llm.ChatChunk | str | FlushSentinel] = Agent.default.llm_node(
            self, chat_ctx, tools, model_settings
        )
        try:
            async for chunk in stream:
                produced = True
                if self._speculation is not None:
                    self._speculation.note_tokens(handle_id)
                yield chunk
        except APIError as e:
            self.llm_failures += 1
            logger.warning("LLM failed (%s); apologising to the caller", e)
            yield (" " if produced else "") + self._settings.apology

    def _request_ctx(self, chat_ctx: llm.ChatContext, tools: list[str]) -> llm.ChatContext:
        """What the LLM is sent: the history with the example turns after the instructions
        (`prompt.example_turns`) and every caller message followed by its note; the history
        itself (and so the call record) keeps the caller's own words."""
        today = date.today()
        items: list[llm.ChatItem] = []
        source = list(chat_ctx.items)
        lead = 0
        while lead < len(source) and getattr(source[lead], "role", None) == "system":
            lead += 1
        items += source[:lead]
        items += self._examples
        for item in source[lead:]:
            if isinstance(item, llm.ChatMessage) and item.role == "user" and item.text_content:
                note = turn_note(self._settings, tools, item.text_content, today)
                if note:
                    item = item.model_copy(update={"content": [f"{item.text_content}\n\n({note})"]})
            items.append(item)
        return llm.ChatContext(items)

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncGenerator[rtc.AudioFrame, None]:
        """The default TTS node, counting the audio made for each reply."""
        handle_id = current_speech_handle_id()
        frames: Any = Agent.default.tts_node(self, text, model_settings)
        async for frame in frames:
            if self._speculation is not None:
                self._speculation.note_audio(handle_id, frame.duration)
            yield frame


class _StandInCall(Call):
    """A call that never happens: it gives the priming agent the tools a call has."""

    transport = "prime"

    def __init__(self) -> None:
        super().__init__("prime", output_rate=24000)


async def prime_llm_cache(settings: AgentSettings, model: llm.LLM) -> None:
    """Have the LLM server read the prompt every call starts with (instructions, facts, tools,
    examples, greeting) once, when the worker starts: the first call's own warm-up is then a
    cache hit, and its first turn does not wait behind a cold prompt. Calls whose tools differ
    (a transfer target set) share the part of the prompt before the tools."""
    if not isinstance(model, OpenAICompatLLM):
        return
    agent = VoiceAgent(settings, call=_StandInCall())
    system = llm.ChatMessage(role="system", content=[agent.instructions])
    await agent._send_warm_up(model, llm.ChatContext([system]))
