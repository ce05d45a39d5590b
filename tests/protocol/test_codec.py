"""The codec alone: frames in, commands or errors out."""

from __future__ import annotations

import json

import pytest

from improto.protocol import codec
from improto.protocol.codec import ErrorCode, ProtocolError

#: Every test here with orjson and with the json module alone (conftest.py).
pytestmark = pytest.mark.usefixtures("json_library")


@pytest.mark.parametrize(
    "text, command",
    [
        ('{"username": "x", "msg": "hi"}', codec.SendToGroup("lobby", "hi")),
        ('{"to_user": "bob", "msg": "hi"}', codec.SendToUser("bob", "hi")),
        ("plain text", codec.SendToGroup("lobby", "plain text")),
        ('{"x": 1}', codec.SendToGroup("lobby", '{"x": 1}')),
        ('{"type": "send", "group": "g", "msg": "m", "id": 3}',
         codec.SendToGroup("g", "m", "3", native=True)),
        ('{"type": "private", "to": "u", "msg": "m"}', codec.SendToUser("u", "m", native=True)),
        ('{"type": "join", "group": "g"}', codec.Join("g")),
        ('{"type": "leave", "group": "g", "id": "x"}', codec.Leave("g", "x")),
        ('{"type": "who", "group": "g"}', codec.Who("g")),
    ],
)
def test_decode(text, command):
    assert codec.decode(text) == command


@pytest.mark.parametrize(
    "text, code",
    [
        ('{"to_user": 5, "msg": "x"}', ErrorCode.BAD_MESSAGE),
        ('{"to_user": "", "msg": "x"}', ErrorCode.BAD_MESSAGE),
        ('{"type": "nope"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "send", "group": "g"}', ErrorCode.BAD_MESSAGE),
        ('{"type": "join", "group": 7}', ErrorCode.BAD_MESSAGE),
        ('{"type": "join", "group": "a/b"}', ErrorCode.BAD_NAME),
        ('{"type": "join", "group": "g", "id": "' + "x" * 65 + '"}', ErrorCode.BAD_MESSAGE),
    ],
)
def test_decode_errors(text, code):
    with pytest.raises(ProtocolError) as caught:
        codec.decode(text)
    assert caught.value.code is code
    assert caught.value.reason.endswith(".")


@pytest.mark.parametrize("name", ["alice", "小二", "Zoë", "a b", "x" * 32])
def test_good_names(name):
    assert codec.check_name(name) == name


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "empty"),
        ("x" * 33, "longer than 32"),
        (" alice", "white space"),
        ("al\x00ice", "U+0000"),
        ("al\u202eice", "U+202E"),
        ("a\nb", "U+000A"),
        ("a/b", "'/'"),
        ("Improto", "reserved"),
    ],
)
def test_bad_names(name, fragment):
    with pytest.raises(ProtocolError) as caught:
        codec.check_name(name)
    assert caught.value.code is ErrorCode.BAD_NAME
    assert fragment in caught.value.reason


def test_encoding_keeps_unicode_readable_and_compact():
    frame = codec.group_message("lobby", "小二", "你好")
    assert frame == '{"type":"message","group":"lobby","sender":"小二","username":"小二","from_user":"小二","msg":"你好"}'.encode()


def test_error_frames_differ_by_dialect():
    err = ProtocolError(ErrorCode.UNKNOWN_USER, "User 'x' is not online.", "7")
    native = json.loads(codec.error(err, native=True))
    seed = json.loads(codec.error(err, native=False))
    assert native == {"type": "error", "code": "unknown_user", "reason": "User 'x' is not online.", "id": "7"}
    assert seed["username"] == seed["from_user"] == seed["sender"] == codec.SYSTEM_NAME
    assert seed["msg"] == "User 'x' is not online."


def test_who_fits_its_size_and_says_when_it_was_cut() -> None:
    users = sorted(f"user{i:05d}-名" for i in range(2000))
    whole = json.loads(codec.who("lobby", users, "5"))
    assert whole == {"type": "who", "group": "lobby", "users": users, "id": "5"}
    for max_size in (100, 4096, 30000):
        reply = codec.who("lobby", users, "5", max_size)
        cut = json.loads(reply)
        assert len(reply) <= max_size and cut["truncated"] is True
        assert cut["users"] == users[: len(cut["users"])] and len(cut["users"]) < len(users)
        # As many as fit: one more would not.
        one_more = codec.who("lobby", users[: len(cut["users"]) + 1], "5")
        assert len(one_more) + len(b',"truncated":true') > max_size
    assert "truncated" not in json.loads(codec.who("lobby", users[:3], "5", 4096))
