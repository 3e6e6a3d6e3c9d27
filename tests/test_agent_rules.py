"""What the agent is told and what it enforces, without a model: the facts file, the booking
rules, the prompt builder's notes and tool choices, and tool calls written as text."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from plugins.vllm.tool_text import ToolCallSplitter
from worker.booking import check_booking, parse_party, parse_time
from worker.facts import BusinessFacts, FactsError, load_facts, spoken_time
from worker.prompt import build_instructions, example_turns, forced_tool, likely_openers, turn_note
from worker.settings import AgentSettings, SettingsError, load_settings

EVALS = Path(__file__).parent / "evals"
TUESDAY = date(2026, 12, 1)


@pytest.fixture
def restaurant() -> BusinessFacts:
    return load_facts(EVALS / "restaurant.facts.yaml")


def test_times_are_spoken_the_way_people_say_them() -> None:
    assert [spoken_time(m) for m in (0, 9 * 60, 12 * 60, 21 * 60 + 30)] == [
        "midnight", "9 am", "noon", "9:30 pm",
    ]  # fmt: skip


def test_opening_hours_group_equal_days(restaurant: BusinessFacts) -> None:
    said = restaurant.spoken_hours()
    assert said.startswith("Monday closed; Tuesday to Thursday 5 pm to 10 pm;")
    assert "Friday to Saturday noon to 11 pm" in said


def test_a_bad_facts_file_is_a_clear_settings_error(tmp_path: Path) -> None:
    bad = tmp_path / "f.yaml"
    bad.write_text("business: X\nhours:\n  monday: 9-5\n")
    with pytest.raises(FactsError, match="HH:MM-HH:MM"):
        load_facts(bad)
    with pytest.raises(SettingsError, match="facts file not found"):
        load_settings(agent={"facts": str(tmp_path / "missing.yaml")})
    s = load_settings(agent={"facts": str(EVALS / "clinic.facts.yaml")})
    assert s.agent.facts is not None and s.agent.facts.business == "Northside Family Clinic"


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Are you open on Mondays?", "Monday: closed all day"),
        ("What time do you close tonight?", "Today is Tuesday."),
        ("Is there somewhere to park?", "Parking: Free car park"),
        ("Where exactly are you?", "Address: 14 Mill Lane"),
        ("Can I bring my dog?", "Dogs: Dogs are welcome"),
        ("What are your opening hours?", "Opening hours: Monday closed"),
    ],
)
def test_the_facts_a_question_touches(
    restaurant: BusinessFacts, question: str, expected: str
) -> None:
    assert any(line.startswith(expected) for line in restaurant.relevant(question, TUESDAY))


def test_a_question_no_fact_covers_gets_the_dont_know_note(restaurant: BusinessFacts) -> None:
    agent = AgentSettings(facts=restaurant)
    assert restaurant.relevant("Do you have live music?", TUESDAY) == []
    assert "don't know" in turn_note(agent, [], "Do you have live music?", TUESDAY)
    assert "Which day and time" in turn_note(agent, ["make_booking"], "I want to book.", TUESDAY)
    friday = turn_note(agent, [], "Do you have live music on Friday nights?", TUESDAY)
    assert "Friday" not in friday and "don't know" in friday  # a day alone is no answer


@pytest.mark.parametrize(
    ("day", "time", "party", "accepted", "reason"),
    [
        ("Friday", "7 pm", 4, True, "booked: a table for 4 on Friday at 7 pm"),
        ("Sunday", "ten pm", 10, False, "only take 8 people"),
        ("Sunday", "8:30 pm", 2, False, "last booking is at 8 pm"),
        ("monday", "19:00", 2, False, "closed on Mondays"),
        ("tomorrow", "seven", "two", True, "Wednesday at 7 pm"),
        ("someday", "7 pm", 2, False, "Which day"),
        ("Friday", "late", 2, False, "What time"),
    ],
)
def test_booking_rules_are_enforced_in_code(
    restaurant: BusinessFacts, day: str, time: str, party: object, accepted: bool, reason: str
) -> None:
    decision = check_booking(restaurant, day, time, party, today=TUESDAY)
    assert decision.accepted is accepted
    assert reason in decision.message


def test_times_and_party_sizes_as_a_model_passes_them_on() -> None:
    assert parse_time("7:30 pm") == (19 * 60 + 30, True)
    assert parse_time("19:30") == (19 * 60 + 30, True)
    assert parse_time("half past seven") == (7 * 60 + 30, False)
    assert parse_time("noon") == (12 * 60, True)
    assert parse_time("25:00") is None
    assert parse_party("ten") == 10 and parse_party("4") == 4 and parse_party(True) is None


def test_instructions_name_only_the_tools_the_call_has(restaurant: BusinessFacts) -> None:
    agent = AgentSettings(facts=restaurant)
    web = build_instructions(agent, ["end_call", "make_booking"])
    assert "transfer_to_human" not in web and "make_booking" in web
    assert web.rstrip().endswith("- Prices: Main courses cost 14 to 26 dollars.")
    phone = build_instructions(agent, ["end_call", "transfer_to_human", "make_booking"])
    assert "transfer the caller to a colleague" in phone
    plain = build_instructions(AgentSettings(), ["end_call"])
    assert "Facts" not in plain


def test_the_tool_the_words_ask_for_is_chosen_in_code() -> None:
    tools = ["end_call", "transfer_to_human", "make_booking"]
    assert forced_tool(tools, ["Can I speak to a person about my booking?"]) == (
        "transfer_to_human"
    )
    assert forced_tool(tools, ["Thanks, bye!"]) == "end_call"
    assert forced_tool(tools, ["Book a table for two on Friday at 7 pm"]) == "make_booking"
    assert forced_tool(tools, ["I want to book a table."]) is None  # no day or time yet
    assert forced_tool(tools, ["I want to book.", "Saturday at eight pm"]) == "make_booking"
    assert forced_tool(tools, ["What time do you open on Saturday?"]) is None
    assert forced_tool(["end_call"], ["Can I talk to a person?"]) is None


def test_examples_follow_the_business_and_its_tools(restaurant: BusinessFacts) -> None:
    agent = AgentSettings(facts=restaurant)
    with_tools = example_turns(agent, ["end_call", "transfer_to_human", "make_booking"])
    calls = [i.name for i in with_tools if getattr(i, "type", "") == "function_call"]
    assert calls == ["make_booking", "transfer_to_human"]
    outputs = [i.output for i in with_tools if getattr(i, "type", "") == "function_call_output"]
    assert outputs[0].startswith("That's booked:"), "the example booking is one the rules accept"
    assert not [i for i in example_turns(agent, []) if getattr(i, "type", "") != "message"]
    assert example_turns(AgentSettings(), []) == []


def _split(chunks: list[str]) -> tuple[str, list[tuple[str, str]]]:
    splitter = ToolCallSplitter()
    text = "".join(splitter.feed(c) for c in chunks) + splitter.finish()
    return text, [(c.name, c.arguments) for c in splitter.calls]


def test_tool_calls_written_as_text_become_calls_and_are_never_spoken() -> None:
    text, calls = _split(
        ["Let me check. <tool", '_call>{"name": "end_call", "arg', 'uments": {}}</tool_call>']
    )
    assert text == "Let me check. " and calls == [("end_call", "{}")]
    text, calls = _split(['  {"name": "make_booking", ', '"arguments": {"day": "Friday"}}'])
    assert text == "" and calls == [("make_booking", '{"day": "Friday"}')]
    text, calls = _split(['{"name": "x", "arguments": "{\\"a\\": 1}"} {"name": "y"}'])
    assert calls == [("x", '{"a": 1}'), ("y", "{}")]
    assert _split(["{not json at all}"]) == ("{not json at all}", [])
    assert _split(["We close at 9 <", "3 hours from now."]) == (
        "We close at 9 <3 hours from now.",
        [],
    )


def test_plain_words_pass_through_as_they_arrive() -> None:
    splitter = ToolCallSplitter()
    assert splitter.feed("Hello") == "Hello"
    assert splitter.feed(" there <to") == " there "
    assert splitter.feed("day") == "<today"


def test_the_openers_made_at_load_are_the_example_replies_first_pieces(
    restaurant: BusinessFacts,
) -> None:
    """The piece cache is filled with how the prompt's example replies open, cut as the TTS
    cuts them: the small model opens its own replies the same way."""
    agent = AgentSettings(facts=restaurant)
    openers = likely_openers(agent)
    assert "Sorry," in openers and "I'm sorry," in openers
    assert all(len(o.split()) <= 6 for o in openers)
    assert agent.greeting not in openers
    assert likely_openers(AgentSettings()) == []  # no facts: no examples to learn from
