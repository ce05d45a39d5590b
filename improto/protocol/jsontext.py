"""
Strict JSON for client frames: what browsers' ``JSON.parse`` accepts and
what improto can encode back, checked without recursing in Python.

Python's ``json`` module accepts ``NaN`` and ``Infinity``, turns ``1e400``
into infinity, recurses once per nesting level (so a frame of a thousand
``[`` raises RecursionError) and decodes ``"\\ud800"`` into a string that
cannot be encoded as UTF-8. Each of those is refused here with a
:class:`JsonRefused` that names the problem.

Parsing tries ``orjson`` first when it is installed (a declared
dependency on CPython; the ``json`` module otherwise): it is several times
faster per frame. It is only trusted where it agrees with the strict
``json`` path exactly: it refuses NaN, infinities, lone-surrogate escapes,
control characters and trailing commas (so any frame it refuses is parsed
again by ``json``, whose refusal and error text are the ones clients get),
and a frame with a run of 19 or more digits skips it (orjson turns integers
outside 64 bits into floats). ``tests/protocol/test_strict_json.py``
checks the two paths against each other.
"""

from __future__ import annotations

import json
import math
import re
import sys
from itertools import accumulate
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency on CPython
    orjson = None  # type: ignore[assignment]

#: Deepest nesting of arrays and objects in a frame. A native frame is an
#: object, so a ``msg`` may nest one level less.
MAX_DEPTH = 33

#: A complete JSON string literal (the unrolled form never backtracks).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
#: ``\uD800``..``\uDFFF`` escapes: decoding them may yield a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: A number orjson would not give back exactly (beyond 64 bits it yields a float).
_LONG_DIGITS = re.compile(r"[0-9]{19}")

#: orjson's ``loads`` when installed and wanted; None: the ``json`` module alone.
fast_loads: Any = orjson.loads if orjson is not None else None


class JsonRefused(ValueError):
    """The text is not JSON that improto accepts; ``reason`` says why."""

    def __init__(self, reason: str, syntax: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True for "not JSON at all" (``bad_json``), False for JSON that
        #: breaks one of improto's limits (``bad_message``).
        self.syntax = syntax


def nesting_depth(text: str) -> int:
    """
    How deep arrays and objects nest in ``text`` (unclosed ones count),
    brackets inside string literals not counted. Linear, and every step
    runs in C.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(0, max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))))


def too_deep(text: str) -> bool:
    """Whether ``text`` nests deeper than :data:`MAX_DEPTH`; two ``str.count`` calls
    for the common frame with few brackets."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    return nesting_depth(text) > MAX_DEPTH


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON number.")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise JsonRefused(f"The number {literal[:20]}{'...' if len(literal) > 20 else ''} "
                          "is too large for a JSON number (a 64-bit float).")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_CHECK_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def suspect(text: str) -> bool:
    """
    Whether ``text`` may hold a surrogate or a ``\\uD800``..``\\uDFFF``
    escape; False: :func:`has_surrogate` and :func:`check_unicode` would
    find nothing. An ASCII text holds no surrogate (``isascii`` reads a
    flag), and one without ``\\u`` no escape: most frames cost no scan.
    """
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return True
    return "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


def parse(text: str) -> Any:
    """
    Parse one frame as strict JSON, or raise :class:`JsonRefused`.

    The depth is checked before parsing, so the parser never recurses
    deeper than :data:`MAX_DEPTH`.
    """
    if too_deep(text):
        raise JsonRefused(
            f"The frame nests arrays and objects deeper than {MAX_DEPTH} levels.", syntax=False
        )
    if fast_loads is not None:
        try:
            value = fast_loads(text)
        except ValueError:
            pass  # refused: json decides, and words the refusal
        else:
            # A float may be an integer orjson could not hold: then json decides.
            if _floatless(value) or _LONG_DIGITS.search(text) is None:
                return value
    return _strict(text)


def _floatless(value: Any) -> bool:
    """No float anywhere in ``value`` (a frame of strings: one loop, no call)."""
    if type(value) is dict:
        value = value.values()
    elif type(value) is not list:
        return type(value) is not float
    for item in value:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float or not _floatless(item):
            return False
    return True


def _strict(text: str) -> Any:
    """The reference parser: the ``json`` module with improto's refusals."""
    try:
        value = _DECODER.decode(text)
    except JsonRefused:
        raise
    except json.JSONDecodeError as e:
        raise JsonRefused(f"The frame is not valid JSON: {e.msg} at character {e.pos}.") from None
    except ValueError:
        # int() refusing a number of more than sys.get_int_max_str_digits() digits.
        raise JsonRefused(
            f"The frame holds an integer of more than {sys.get_int_max_str_digits()} digits."
        ) from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JsonRefused(
            f"The frame nests arrays and objects deeper than {MAX_DEPTH} levels.", syntax=False
        ) from None
    return value


def check_unicode(value: Any, text: str) -> None:
    """
    Refuse a value parsed from ``text`` that holds a lone surrogate (which
    UTF-8 cannot encode). Only a frame with a ``\\uD800``..``\\uDFFF``
    escape can hold one, so most frames cost one regular-expression scan.
    """
    if _SURROGATE_ESCAPE.search(text) is None:
        return
    match = _SURROGATE.search(_CHECK_ENCODER.encode(value))
    if match is not None:
        raise JsonRefused(
            f"The frame contains the lone surrogate U+{ord(match.group()):04X} (an escape "
            "such as \\ud800 that is not half of a pair); strings must be Unicode text.",
            syntax=False,
        )


def has_surrogate(text: str) -> bool:
    """True when ``text`` itself holds a surrogate code point (never after UTF-8)."""
    return _SURROGATE.search(text) is not None
