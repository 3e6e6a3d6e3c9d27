"""The example business tool: a booking checked against the facts file, in code.

Small models agree to whatever a caller asks ("ten people on Sunday at ten pm" against an
eight-person limit and a 9 pm close), so the model only collects the day, time and party size
and calls the tool; the answer it must relay comes from here. Day and time are read the way a
model passes them on from speech: weekday names, "today"/"tomorrow", "7 pm", "19:30",
"seven thirty", "noon".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

from .facts import WEEKDAYS, BusinessFacts, Weekday, spoken_time

_NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_MINUTE_WORDS = {"o'clock": 0, "oclock": 0, "fifteen": 15, "thirty": 30, "forty-five": 45}
_CLOCK = re.compile(r"^(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.?|p\.m\.?)?$")


def parse_day(text: str, today: date) -> Weekday | None:
    """A weekday name (or its first three letters), today, tonight or tomorrow."""
    t = text.strip().lower().rstrip(".")
    if t in ("today", "tonight", "this evening"):
        return WEEKDAYS[today.weekday()]
    if t == "tomorrow":
        return WEEKDAYS[(today + timedelta(days=1)).weekday()]
    t = t.removeprefix("this ").removeprefix("next ").removesuffix("s")
    for day in WEEKDAYS:
        if t == day or (len(t) >= 3 and day.startswith(t)):
            return day
    return None


def parse_party(value: object) -> int | None:
    """A party size given as a number or a word."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip().lower()
    if text.isdigit() and len(text) <= 4:
        return int(text)
    first = text.split()[0] if text.split() else ""
    return _NUMBERS.get(first)


def parse_time(text: str) -> tuple[int, bool] | None:
    """Minutes after midnight and whether am/pm (or a 24-hour clock) made it unambiguous."""
    t = text.strip().lower().replace("in the evening", "pm").replace("in the morning", "am")
    t = re.sub(r"\s+", " ", t)
    if t in ("noon", "midday", "12 noon"):
        return 12 * 60, True
    if t == "midnight":
        return 0, True
    m = _CLOCK.match(t)
    if m is not None:
        h, mins, half = int(m[1]), int(m[2] or 0), (m[3] or "").replace(".", "")
        if mins >= 60 or h > 23 or (half and not 1 <= h <= 12):
            return None
        if half:
            return (h % 12 + (12 if half == "pm" else 0)) * 60 + mins, True
        return h * 60 + mins, h == 0 or h > 12
    words = t.replace("half past ", "half-past ").split()
    half = ""
    if words and words[-1] in ("am", "pm", "a.m.", "p.m."):
        half = words.pop().replace(".", "")
    if not words:
        return None
    if words[0] == "half-past" and len(words) == 2 and words[1] in _NUMBERS:
        h, mins = _NUMBERS[words[1]], 30
    elif words[0] in _NUMBERS and len(words) <= 2:
        h = _NUMBERS[words[0]]
        mins = _MINUTE_WORDS.get(words[1], -1) if len(words) == 2 else 0
        if mins < 0:
            return None
    else:
        return None
    if not 1 <= h <= 12:
        return None
    if half:
        return (h % 12 + (12 if half == "pm" else 0)) * 60 + mins, True
    return h * 60 + mins, False


@dataclass(frozen=True)
class BookingDecision:
    """The tool's verdict and the sentence handed back to the model: one a caller may hear
    as it is, since a small model often relays a tool's answer word for word."""

    accepted: bool
    message: str
    day: Weekday | None = None
    minute: int | None = None
    party_size: int | None = None


def check_booking(
    facts: BusinessFacts, day: str, time: str, party_size: object, *, today: date
) -> BookingDecision:
    """Accept or decline a booking by the facts file's rules."""
    rules = facts.booking
    if rules is None:
        return BookingDecision(False, "Sorry, we don't take bookings.")
    weekday = parse_day(day, today)
    if weekday is None:
        return BookingDecision(False, "Which day would you like?")
    hours = facts.opening(weekday)
    if hours is None:
        return BookingDecision(
            False,
            f"Sorry, we're closed on {weekday.title()}s. Another day, perhaps?",
            weekday,
        )
    parsed = parse_time(time)
    if parsed is None:
        return BookingDecision(False, "What time would you like?", weekday)
    minute, certain = parsed
    opens, closes = hours
    last = closes - rules.last_booking_before_close
    if not certain and minute < 12 * 60 and not opens <= minute <= last:
        minute += 12 * 60  # "seven" at a restaurant open until ten means 7 pm
    party = parse_party(party_size) if party_size not in (None, "") else 1
    if party is None or party < 1:
        return BookingDecision(False, "How many people will it be?", weekday, minute)
    if rules.max_party is not None and party > rules.max_party:
        return BookingDecision(
            False,
            f"Sorry, we can only take {rules.max_party} people per booking, not {party}.",
            weekday,
            minute,
            party,
        )
    if not opens <= minute <= last:
        return BookingDecision(
            False,
            f"Sorry, on {weekday.title()} we're open {spoken_time(opens)} to "
            f"{spoken_time(closes)}, and the last booking is at {spoken_time(last)}.",
            weekday,
            minute,
            party,
        )
    people = f" for {party}" if rules.max_party is not None else ""
    return BookingDecision(
        True,
        f"That's booked: {rules.what}{people} on {weekday.title()} at {spoken_time(minute)}.",
        weekday,
        minute,
        party,
    )
