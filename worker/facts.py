"""A business's facts as structured data: what the agent may say, and what its tools check.

A small model repeats well what it is given in a short, plain block and invents the rest, so
the facts live in one typed object (``agent.facts``: a YAML file or an inline table) that the
prompt builder renders in spoken form, and that the booking tool reads its rules from: a
rule (opening hours, party size) is enforced in code, never left to the model.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
)  # fmt: skip

_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _minutes(h: str, m: str) -> int:
    hours, mins = int(h), int(m)
    if not (0 <= hours <= 24 and 0 <= mins < 60) or hours * 60 + mins > 24 * 60:
        raise ValueError(f"{h}:{m} is not a time of day")
    return hours * 60 + mins


def parse_hours(value: str) -> tuple[int, int] | None:
    """``"closed"`` or ``"HH:MM-HH:MM"`` (24-hour) as minutes after midnight, or None."""
    if value.strip().lower() == "closed":
        return None
    m = _RANGE.match(value)
    if m is None:
        raise ValueError(f"opening hours {value!r}: expected 'closed' or 'HH:MM-HH:MM'")
    opens, closes = _minutes(m[1], m[2]), _minutes(m[3], m[4])
    if closes <= opens:
        raise ValueError(f"opening hours {value!r}: closing time is not after opening time")
    return opens, closes


def spoken_time(minutes: int) -> str:
    """A time of day as people say it on the phone: ``noon``, ``9 pm``, ``7:30 am``."""
    minutes %= 24 * 60
    if minutes == 12 * 60:
        return "noon"
    if minutes == 0:
        return "midnight"
    h, m = divmod(minutes, 60)
    suffix = "am" if h < 12 else "pm"
    h12 = h % 12 or 12
    return f"{h12} {suffix}" if m == 0 else f"{h12}:{m:02d} {suffix}"


class BookingRules(BaseModel):
    """What the booking tool enforces."""

    what: str = Field("a booking", description="What is booked, e.g. `a table`.")
    max_party: int | None = Field(
        None, ge=1, description="Most people in one booking; unset: party size is not asked."
    )
    last_booking_before_close: int = Field(
        0, ge=0, description="Minutes before closing after which no booking starts."
    )


class BusinessFacts(BaseModel):
    """The facts file: who the business is, when it is open, and what callers ask about."""

    business: str = Field(description="The business's name.")
    kind: str = Field("", description="What it is, e.g. `an Italian restaurant`.")
    hours: dict[Weekday, str] = Field(
        default_factory=dict, description="Per weekday `closed` or `HH:MM-HH:MM`."
    )
    booking: BookingRules | None = Field(None, description="Booking rules; unset: no booking.")
    facts: dict[str, str] = Field(
        default_factory=dict, description="Topic -> plain answer (address, parking, prices...)."
    )

    @field_validator("hours", mode="before")
    @classmethod
    def _lower_days(cls, v: Any) -> Any:
        return {str(k).lower(): str(d) for k, d in v.items()} if isinstance(v, dict) else v

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, v: dict[Weekday, str]) -> dict[Weekday, str]:
        for value in v.values():
            parse_hours(value)
        return v

    def opening(self, day: Weekday) -> tuple[int, int] | None:
        """Opening and closing minute on ``day``; None when closed or not listed."""
        value = self.hours.get(day)
        return parse_hours(value) if value is not None else None

    def spoken_hours(self) -> str:
        """Opening hours in one spoken sentence, consecutive days with equal hours grouped."""
        if not self.hours:
            return ""
        groups: list[tuple[list[Weekday], str]] = []
        for day in WEEKDAYS:
            if day not in self.hours:
                continue
            hours = self.opening(day)
            said = (
                "closed" if hours is None else f"{spoken_time(hours[0])} to {spoken_time(hours[1])}"
            )
            if (
                groups
                and groups[-1][1] == said
                and WEEKDAYS.index(groups[-1][0][-1]) + 1 == WEEKDAYS.index(day)
            ):
                groups[-1][0].append(day)
            else:
                groups.append(([day], said))
        parts = []
        for days, said in groups:
            name = days[0].title() if len(days) == 1 else f"{days[0].title()} to {days[-1].title()}"
            parts.append(f"{name} {said}")
        return "; ".join(parts) + "."

    def day_line(self, day: Weekday) -> str:
        hours = self.opening(day)
        if hours is None:
            return f"{day.title()}: closed all day, not open."
        return f"{day.title()}: open {spoken_time(hours[0])} to {spoken_time(hours[1])}."

    def relevant(self, text: str, today: date) -> list[str]:
        """The facts a caller's words touch: the days they name (today and tomorrow made
        concrete), all opening hours when they ask about opening without a day, and the
        topics whose words or common synonyms they use. A plain word match: the whole block
        is in the system prompt too, so a miss only loses the hint."""
        words = _words(text)
        lines: list[str] = []
        days: list[Weekday] = []
        for w in words:
            if w in ("today", "tonight"):
                days.append(WEEKDAYS[today.weekday()])
                lines.append(f"Today is {WEEKDAYS[today.weekday()].title()}.")
            elif w == "tomorrow":
                day = WEEKDAYS[(today.weekday() + 1) % 7]
                days.append(day)
                lines.append(f"Tomorrow is {day.title()}.")
            elif w == "weekend":
                days += ["saturday", "sunday"]
            else:
                days += [d for d in WEEKDAYS if w in (d, d[:3])]
        if self.hours and self.asks_about_hours(text):  # "live music on Friday" is not
            if days:
                lines += [self.day_line(d) for d in dict.fromkeys(days) if d in self.hours]
            else:
                lines.append(f"Opening hours: {self.spoken_hours()}")
        return lines + self.topics_for(text)

    def asks_about_hours(self, text: str) -> bool:
        return bool(_words(text) & _HOURS_WORDS)

    def topics_for(self, text: str) -> list[str]:
        """The free-form facts whose topic (or a common synonym of it) the words use."""
        words = _words(text)
        lines = []
        for topic, answer in self.facts.items():
            keys = _words(topic)
            for k in list(keys):
                keys |= _SYNONYMS.get(k, set())
            if any(_same_word(w, k) for w in words for k in keys):
                lines.append(f"{topic[:1].upper()}{topic[1:]}: {answer.strip()}")
        return lines

    def render(self) -> str:
        """The block the prompt builder places in the system prompt."""
        lines = [f"- Name: {self.business}" + (f", {self.kind}" if self.kind else "")]
        if self.hours:
            lines.append(f"- Opening hours: {self.spoken_hours()}")
        if self.booking is not None:
            rule = f"- Bookings: {self.booking.what}"
            if self.booking.max_party:
                rule += f", at most {self.booking.max_party} people"
            lines.append(rule + ".")
        for topic, text in self.facts.items():
            lines.append(f"- {topic[:1].upper()}{topic[1:]}: {text.strip()}")
        return "\n".join(lines)


_HOURS_WORDS = {"open", "opening", "close", "closing", "closed", "hour", "time", "come", "visit"}
_SYNONYMS: dict[str, set[str]] = {
    k: set(v.split())
    for k, v in {
        "address": "where located location find directions street get there",
        "location": "where located address find directions street",
        "parking": "park car",
        "price": "cost much expensive cheap charge pay dollar",
        "cost": "price much expensive cheap charge pay dollar",
        "emergency": "urgent pain hurt bleeding ambulance chest breathe",
        "dog": "pet animal",
        "pet": "dog cat animal",
        "vegetarian": "vegan meat veggie",
        "gluten": "celiac coeliac wheat",
        "insurance": "insured cover covered plan",
        "warranty": "guarantee",
        "phone": "number",
    }.items()
}
_STOP = {"the", "and", "you", "your", "are", "for", "can", "with", "what", "have", "there"}


def _norm(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and len(word) > 3 and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> set[str]:
    found = re.findall(r"[a-z]+", text.lower().replace("-", " "))
    return {_norm(w) for w in found if len(w) >= 3 and w not in _STOP}


def _same_word(a: str, b: str) -> bool:
    """Equal, or one starts the other and the shorter has four letters or more."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    return len(short) >= 4 and long_.startswith(short)


class FactsError(ValueError):
    """A facts file that cannot be read or does not describe a business."""


def load_facts(path: Path) -> BusinessFacts:
    """Read a YAML facts file, with errors a person can act on."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FactsError(f"facts file not found: {path}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise FactsError(f"facts file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise FactsError(f"facts file {path} must be a mapping with at least `business:`")
    try:
        return BusinessFacts.model_validate(data)
    except ValueError as e:
        raise FactsError(f"facts file {path}: {e}") from e
