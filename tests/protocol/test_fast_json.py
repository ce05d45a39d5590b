"""
orjson (when installed) must change nothing a client can see: every frame
parses to the value the strict json path gives, or is refused by the same
path with the same words; every frame the server writes is byte-identical.
"""

from __future__ import annotations

import math
import random
import struct
import sys
from typing import Any

import pytest

from improto.protocol import codec, jsontext, streams

orjson = pytest.importorskip("orjson")

#: Pieces to glue into frames: JSON syntax, and what json and orjson differ on.
PIECES = list('{}[],:"\\ \t\n\r\x0b\x0c\x00\x1f-+.0123456789eE') + [
    "\\u", "true", "false", "null", "NaN", "Infinity", '"a"', "é", "\u2028", "\ufeff", "\x7f",
    "\\ud83d", "\\ude00", "\\ud800", "1e400", "0.1", "-0.0", "5e-324", "9" * 19, "1" + "0" * 20,
    "-9223372036854775809", "18446744073709551616", '"to_user"', '"msg"', '"type"',
]


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (-0.0 is not 0.0, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def outcome(text: str) -> tuple[str, Any]:
    try:
        return "ok", jsontext.parse(text)
    except jsontext.JsonRefused as e:
        return "refused", (e.reason, e.syntax)


def strict_outcome(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    with monkeypatch.context() as m:
        m.setattr(jsontext, "fast_loads", None)
        return outcome(text)


@pytest.mark.parametrize("seed", range(4))
def test_fast_parse_agrees_with_the_strict_path(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    accepted = 0
    for _ in range(20_000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        fast, strict = outcome(text), strict_outcome(text, monkeypatch)
        assert fast[0] == strict[0], text
        if fast[0] == "ok":
            accepted += 1
            assert same(fast[1], strict[1]), text
        else:
            assert fast[1] == strict[1], text
    assert accepted > 100  # the pieces do make JSON


@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616", "-9223372036854775809", "[" + "1" * 30 + "]",
        '{"msg":' + "9" * 5000 + "}", "1e400", "-1" + "0" * 400 + ".5", "NaN", "[-Infinity]",
        '"\\ud800"', '"\\udc00x"', '["\\ud83d\\ude00"]', "[1,]", '{"a":1,}', '{"a":1,"a":2,"b":3}',
        '"\x00"', "\ufeff{}", "-0", "-0.0", "4.9e-324", "1E5", "0.1000000000000000055511151231257827",
    ],
)
def test_what_the_libraries_differ_on(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, strict = outcome(text), strict_outcome(text, monkeypatch)
    assert fast[0] == strict[0]
    assert same(fast[1], strict[1]) if fast[0] == "ok" else fast[1] == strict[1]


def test_floats_parse_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        x = struct.unpack("d", rng.randbytes(8))[0] if rng.random() < 0.5 else rng.random() * 10.0 ** rng.randint(-320, 300)
        for text in (repr(x), f"{x:.25e}", f"{x:.17g}"):
            fast, strict = outcome(text), strict_outcome(text, monkeypatch)
            assert fast[0] == strict[0] and (fast[0] != "ok" or same(fast[1], strict[1])), text


def test_every_code_point_is_written_alike() -> None:
    for start in range(0, sys.maxunicode + 1, 4096):
        chars = [chr(c) for c in range(start, start + 4096) if not 0xD800 <= c <= 0xDFFF]
        text = "".join(chars)
        obj = {"each": chars, "all": text, "k" + text: [True, None, 2**63 - 1, -(2**63)]}
        assert codec._encode_texts(obj) == codec.encode(obj)


def test_server_frames_are_written_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    def frames() -> list[bytes]:
        return [
            codec.private_message("alice", "小二", 'he said "hi"\n\x00\u2028'),
            codec.private_message("alice", "bob", {"x": 1e16, "y": [1.5, -0.0]}),
            codec.group_message("lobby", "Zoë", "plain"),
            codec.group_message("lobby", "Zoë", 1e-7),
            codec.ack("id-\x01"),
            streams.ack("7", "user:bob", 2**53 - 1, True),
            streams.positioned(codec.private_message("a", "b", "c"), "user:b\"", 3),
        ]

    fast = frames()
    monkeypatch.setattr(codec, "encode_texts", codec.encode)
    assert fast == frames()
    assert b'"x":1e+16' in fast[1] and b"1e-07" in fast[3]  # json's floats, not orjson's


def test_a_lone_surrogate_fails_as_it_did() -> None:
    with pytest.raises(UnicodeEncodeError):
        codec.private_message("alice", "bob", "\ud800")


def test_an_unsuspect_frame_needs_none_of_the_slow_checks() -> None:
    """decode skips has_surrogate and check_unicode when suspect() is False."""
    rng = random.Random(3)
    pieces = PIECES + ["\ud800", "\\uD800", "\\udfff", "\\uDC0", "1" * 18, "\\\\ud800", "中", "\\u"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        if jsontext.suspect(text):
            continue
        assert not jsontext.has_surrogate(text)
        assert jsontext._SURROGATE_ESCAPE.search(text) is None
