"""Guards for numbers and JSON that arrive from the network.

Every parser of network input (SIP, SDP, RTP, Twilio messages, HTTP bodies) reads its numbers
and JSON through these, so a hostile value fails in one known way, :class:`WireError`, which
each protocol maps to its own answer (SIP 400, WebSocket 1003, HTTP 400). Python's own
``int()`` and ``json.loads`` fail in several others on such input: ``ValueError`` past 4,300
digits, ``RecursionError`` on deep nesting, ``OverflowError``, unicode digits such as "²" that
``str.isdigit`` accepts and ``int`` refuses.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

MAX_DIGITS = 20
"""No number we read legitimately is longer (a 64-bit value has at most 20 digits)."""
MAX_JSON_DEPTH = 16
"""Media Streams messages and offers nest three levels at most."""

T = TypeVar("T")


class WireError(ValueError):
    """A value from the network we refuse; the text says which and why, for the reply."""


def integer(text: object, what: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
    """An unsigned decimal integer in [lo, hi], written in ASCII digits only."""
    if isinstance(text, bool):
        raise WireError(f"{what} is not a number")
    if isinstance(text, int):
        value = text
    else:
        s = text.strip() if isinstance(text, str) else ""
        if not s or len(s) > MAX_DIGITS or not (s.isascii() and s.isdigit()):
            raise WireError(f"{what} is not a number of at most {MAX_DIGITS} digits")
        value = int(s)
    if not lo <= value <= hi:
        raise WireError(f"{what} {value} is out of range [{lo}, {hi}]")
    return value


def number(value: object, what: str, *, lo: float, hi: float) -> float:
    """A finite JSON number (int or float) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{what} is not a number")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise WireError(f"{what} is out of range [{lo:g}, {hi:g}]")
    return float(value)


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise WireError(f"a JSON number of more than {MAX_DIGITS} digits")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > 64:
        raise WireError("a JSON number longer than 64 characters")
    value = float(text)
    if not math.isfinite(value):
        raise WireError("a JSON number out of range")
    return value


def _json_constant(name: str) -> float:
    raise WireError(f"{name} is not JSON")


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects, counted outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def load_json(text: str, what: str = "message", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from the network: nesting, number lengths and NaN/Infinity are bounded."""
    if _depth(text) > max_depth:
        raise WireError(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(
            text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except json.JSONDecodeError as e:
        raise WireError(f"{what} is not JSON: {e.msg}") from e
    except RecursionError as e:  # unreachable after the depth check; kept as a last fence
        raise WireError(f"{what} nests too deep") from e


def field(obj: dict[str, Any], key: str, kind: type[T], what: str, *, required: bool = True) -> T:
    """``obj[key]`` checked to be a ``kind`` (absent → None when not required)."""
    value = obj.get(key)
    if value is None and not required:
        return None  # type: ignore[return-value]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WireError(f"{what}.{key} must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", dict: "an object", list: "a list", int: "an integer"}.get(
        kind, kind.__name__
    )
