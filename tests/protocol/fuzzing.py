"""
Hypothesis strategies for client frames, and the example budgets.

The ``improto`` profile keeps the normal suite fast; ``HYPOTHESIS_PROFILE=fuzz``
(the ``fuzz`` tox env) runs many more examples. No example database is
written, so a run leaves no files behind.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "improto", max_examples=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz", max_examples=3000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "improto"))

#: Names that mean something to the router, plus bad and look-alike ones.
NAMES = ["alice", "bob", "café", "cafe\u0301", "lobby", "dev", "", " x", "a/b", "іmproto", "x" * 70]
TYPES = ["send", "private", "join", "leave", "who", "nope", "", "SEND"]
#: Pieces that break JSON, numbers or Unicode in the ways attackers try.
POISON = [
    ",", "}", "]", "{", "[", '"', "\\", ":", "NaN", "Infinity", "-Infinity", "1e400",
    "1" * 4400, "\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "[" * 40, "{\"a\":" * 40,
    "\u202e", "\x00", "'type':", '"type":',
]

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**80), max_value=10**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    # Lone surrogates: sent as \\ud800 escapes, the only way they come over UTF-8.
    | st.sampled_from(["\ud800", "x\udfff", "\udbff\ud800"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ids = st.none() | st.text(max_size=8) | st.integers() | st.sampled_from(
    [True, 1.5, [], "x" * 65, 10**70, "\ud800"]
)


@st.composite
def native_objects(draw: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": draw(st.sampled_from(TYPES))}
    for key, values in (
        ("group", st.sampled_from(NAMES) | st.integers()),
        ("to", st.sampled_from([*NAMES, "\udc00"])),
        ("msg", json_values),
        ("id", ids),
    ):
        if draw(st.booleans()):
            obj[key] = draw(values)
    return obj


def dumps(obj: Any, ensure_ascii: bool) -> str:
    """JSON as a client would send it; a lone surrogate can only come as an escape."""
    text = json.dumps(obj, ensure_ascii=ensure_ascii)
    if not ensure_ascii and any("\ud800" <= c <= "\udfff" for c in text):
        text = json.dumps(obj, ensure_ascii=True)
    return text


@st.composite
def mutated(draw: Any, texts: st.SearchStrategy[str]) -> str:
    """A frame with a few characters deleted, replaced or poisoned."""
    text = draw(texts)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if action == "insert":
            text = text[:at] + draw(st.sampled_from(POISON)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at]
    return text


native_texts = st.builds(dumps, native_objects(), st.booleans())
seed_texts = st.builds(
    lambda obj, ascii_: dumps(obj, ascii_),
    st.fixed_dictionaries({"msg": json_values}, optional={"username": st.text(max_size=8),
                                                          "to_user": st.sampled_from(NAMES)}),
    st.booleans(),
)
frames = st.one_of(
    st.text(max_size=40),
    st.builds(dumps, json_values, st.booleans()),
    native_texts,
    seed_texts,
    mutated(native_texts),
    mutated(seed_texts),
    st.lists(st.sampled_from(POISON), max_size=6).map("".join),
)


def browser_json(data: str | bytes) -> dict[str, Any]:
    """
    What a browser's ``JSON.parse`` accepts (no NaN/Infinity, no lone
    surrogates), as an object with a string ``type``: every frame improto
    sends must pass this.
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    assert isinstance(data, str), f"binary frame {data[:40]!r}"

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in {data[:200]!r}")

    value = json.loads(data, parse_constant=refuse)
    data.encode("utf-8")  # no lone surrogates
    assert isinstance(value, dict) and isinstance(value.get("type"), str), data[:200]
    return value


def meant_native(text: str) -> bool:
    """A frame that must never reach others verbatim (see docs/protocol.md):
    it looks native and is not a well-formed seed object."""
    from improto.protocol import codec, jsontext

    if not codec.looks_native(text):
        return False
    try:
        obj = jsontext.parse(text)
    except jsontext.JsonRefused:
        return True
    return not (isinstance(obj, dict) and "type" not in obj)
