"""The system prompt, built for a small model on the phone.

Small models follow short, concrete, positive instructions and repeat what stands closest to
the conversation, so the order is: who the agent is, how to speak, what to do when the facts
run out, how to use the tools that exist in this call, and last the business's facts in a
plain block. Tools are only mentioned when the call has them: a model told about a tool it
cannot call writes the call as words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import date

from livekit.agents import llm

from .booking import check_booking
from .facts import BusinessFacts, spoken_time
from .settings import AgentSettings

_PERSON = re.compile(
    r"\b(person|human|someone|somebody|staff|manager|technician|receptionist|colleague|"
    r"representative|operator|agent|doctor|nurse|transfer)\b",
    re.I,
)
_BOOK = re.compile(
    r"\b(book|booking|reserve|reservation|appointment|table for|slot|drop\b.*\boff|"
    r"bring\b.*\bin|come in)\b",
    re.I,
)
_BYE = re.compile(r"\b(bye|goodbye|that's all|that is all|hang up)\b", re.I)
_WHEN = re.compile(
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|today|tonight|tomorrow|"
    r"noon|midday|\d{1,2}(:\d{2})?\s*(am|pm|a\.m\.|p\.m\.)|\d{1,2}:\d{2}|"
    r"(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\s+(o'clock|am|pm|"
    r"thirty|in the (morning|evening|afternoon)))\b",
    re.I,
)


def build_instructions(agent: AgentSettings, tools: Collection[str] = ()) -> str:
    """``agent.instructions``, then the facts and tool guidance that apply to this call."""
    facts = agent.facts
    parts = []
    if facts is not None:
        what = f", {facts.kind}" if facts.kind else ""
        parts.append(f"You answer the phone for {facts.business}{what}.")
    parts.append(agent.instructions.strip())
    if facts is not None:
        fallback = "say you don't know"
        if "transfer_to_human" in tools:
            fallback += " and offer to transfer the caller to a colleague"
        parts.append(
            f"Only state what the facts below say. If they do not answer the question, "
            f"{fallback}; never guess."
        )
    if "make_booking" in tools and facts is not None and facts.booking is not None:
        ask = "the day, the time" + (
            " and how many people" if facts.booking.max_party is not None else ""
        )
        parts.append(
            f"To book, ask for {ask}, then call make_booking and tell the caller what it "
            "answers. Never confirm or refuse a booking yourself."
        )
    if "transfer_to_human" in tools:
        parts.append("When the caller asks for a person, call transfer_to_human.")
    if "end_call" in tools:
        parts.append("When the caller says goodbye, say goodbye and call end_call.")
    text = " ".join(parts)
    if facts is not None:
        text += f"\n\nFacts about {facts.business}:\n{facts.render()}"
    return text


def turn_note(agent: AgentSettings, tools: Collection[str], text: str, today: date) -> str:
    """A short note placed right after the caller's words, for this turn: the facts those
    words touch, or that none does.

    A small model copies what stands next to the question far better than what sits in a
    long system prompt. The note is a pure function of the words and the date, so the
    same history always renders the same prompt and the server's prefix cache holds."""
    lines: list[str] = []
    facts = agent.facts
    if facts is not None:
        lines += facts.relevant(text, today)
        covered = bool(facts.topics_for(text)) or facts.asks_about_hours(text)
        wants_booking = _BOOK.search(text) and not facts.topics_for(text)
        if "make_booking" in tools and wants_booking and not _names_when(text):
            ask = "Which day and time would you like"
            if facts.booking is not None and facts.booking.max_party is not None:
                ask += ", and for how many people"
            lines.append(f"Reply: {ask}?")
        elif not covered:
            lines.append("Not in the facts: if asked, say you don't know.")
    return " ".join(lines)


def forced_tool(tools: Collection[str], user_turns: list[str]) -> str | None:
    """The tool the caller's latest words ask for, chosen in code; the model then fills in
    its arguments under a grammar (``tool_choice``), so the call is well formed.

    Left to itself a 0.5B model calls tools at random or reads their names aloud. Asking
    for a person wins over a goodbye, which wins over a booking; a booking needs a day or a
    time in the latest words and the wish to book in them or in the turn before."""
    if not user_turns:
        return None
    text = user_turns[-1]
    if "transfer_to_human" in tools and _PERSON.search(text):
        return "transfer_to_human"
    if "end_call" in tools and _BYE.search(text):
        return "end_call"
    wants = any(_BOOK.search(t) for t in user_turns[-2:])
    if "make_booking" in tools and wants and _names_when(text):
        return "make_booking"
    return None


def _names_when(text: str) -> bool:
    return bool(_WHEN.search(text))


def example_turns(agent: AgentSettings, tools: Collection[str]) -> list[llm.ChatItem]:
    """A few short model exchanges, built from this business's own facts and tools, placed
    between the system prompt and the call.

    A small model imitates turns far better than it follows rules: without them it answers
    every question with a JSON tool call, or reads a tool's name aloud instead of calling it.
    Each example shows one behaviour with the note the real turns carry: answering from a
    note, saying "I don't know" when nothing covers a question, and calling a tool in the
    proper form and relaying its answer. They are the same for every turn of every call with
    these settings, so the server caches them with the system prompt.
    """
    facts = agent.facts
    turns: list[tuple[str, str, tuple[str, dict[str, object], str] | None]] = []
    if facts is not None and facts.hours:
        closed = [d for d in facts.hours if facts.opening(d) is None]
        open_day = next((d for d in reversed(list(facts.hours)) if d not in closed), None)
        hours = facts.opening(open_day) if open_day is not None else None
        if open_day is not None and hours is not None:  # first: the hours read from a note
            turns.append(
                (
                    f"Hi, what are your hours on {open_day.title()}?\n\n"
                    f"({facts.day_line(open_day)})",
                    f"On {open_day.title()} we're open from {spoken_time(hours[0])} to "
                    f"{spoken_time(hours[1])}.",
                    None,
                )
            )
        if closed:
            day = closed[0]
            turns.append(
                (
                    f"Are you open on {day.title()}?\n\n({facts.day_line(day)})",
                    f"Sorry, we're closed on {day.title()}s.",
                    None,
                )
            )
    if facts is not None:
        offer = " I can put you through to a colleague." if "transfer_to_human" in tools else ""
        turns.append(
            (
                "Is there a cash machine?\n\n(Cash machine: One by the front door.)",
                "Yes, there's a cash machine by the front door.",
                None,
            )
        )
        turns.append(
            (
                "Do you sell gift vouchers?\n\n(Not in the facts: if asked, say you don't know.)",
                f"I'm sorry, I don't know that.{offer}",
                None,
            )
        )
    if "make_booking" in tools and facts is not None and facts.booking is not None:
        booking = _example_booking(facts)
        if booking is not None:
            turns.append(booking)
    if "transfer_to_human" in tools:
        turns.append(
            (
                "Can I talk to someone, please?",
                "",
                ("transfer_to_human", {}, "The caller was transferred."),
            )
        )
    items: list[llm.ChatItem] = []
    if not turns:
        return items
    items.append(llm.ChatMessage(role="system", content=["Examples of good replies:"]))
    if agent.greeting:
        # the examples open as a call does: after the greeting, a caller's "Hi, ..." is a
        # question to answer (without this the 0.5B model answered it with the greeting)
        items.append(llm.ChatMessage(role="assistant", content=[agent.greeting]))
    for i, (user, reply, call) in enumerate(turns):
        items.append(llm.ChatMessage(role="user", content=[user]))
        if call is not None:
            name, args, output = call
            call_id = f"example_{i}"
            items.append(llm.FunctionCall(call_id=call_id, name=name, arguments=json.dumps(args)))
            items.append(
                llm.FunctionCallOutput(call_id=call_id, name=name, output=output, is_error=False)
            )
        if reply:
            items.append(llm.ChatMessage(role="assistant", content=[reply]))
    return items


def likely_openers(agent: AgentSettings) -> list[str]:
    """The first pieces of the example replies, as the TTS cuts them: a 0.5B model opens its
    own replies the same way ("Sorry,", "That's booked"), so they are worth having ready."""
    from plugins.kokoro.tts import early_cut

    tools = ("end_call", "make_booking", "transfer_to_human")
    out: list[str] = []
    for item in example_turns(agent, tools):
        if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.text_content:
            text = item.text_content
            if text == agent.greeting:
                continue
            cut = early_cut(text + " ")
            piece = (text[:cut] if cut else text).strip()
            if piece and piece not in out:
                out.append(piece)
    return out


def _example_booking(
    facts: BusinessFacts,
) -> tuple[str, str, tuple[str, dict[str, object], str]] | None:
    """A booking the rules accept, on the first open day an hour after opening."""
    rules = facts.booking
    assert rules is not None
    day = next((d for d in facts.hours if facts.opening(d) is not None), None)
    if day is None:
        return None
    opens, _ = facts.opening(day) or (0, 0)
    when = spoken_time(opens + 60)
    args: dict[str, object] = {"day": day.title(), "time": when}
    people = ""
    if rules.max_party is not None:
        args["party_size"] = 2
        people = " for two"
    decision = check_booking(facts, day, when, args.get("party_size", 1), today=date.today())
    if not decision.accepted:
        return None
    return (
        f"Could I book{people} on {day.title()} at {when}?",
        f"That's booked{people} on {day.title()} at {when}.",
        ("make_booking", args, decision.message),
    )
