"""Strict decoding: frames an attacker would send, and what each one gets."""

from __future__ import annotations

import json
import sys

import pytest

from improto.protocol import codec, jsontext
from improto.protocol.codec import ErrorCode, ProtocolError

#: Every test here with orjson and with the json module alone (conftest.py).
pytestmark = pytest.mark.usefixtures("json_library")

DEEP = 1000


def refused(text: str, native: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        codec.decode(text, native=native)
    assert caught.value.reason.endswith("."), caught.value.reason
    return caught.value


class TestNativeLookingFramesAreNeverBroadcast:
    @pytest.mark.parametrize(
        "text",
        [
            '{"type":"private","to":"bob","msg":"my password",}',
            "{'type': 'private', 'to': 'bob', 'msg': 'my password'}",
            '  {"type" : "send", "group": "lobby", "msg": oops}',
            '{"type":"send","group":"lobby","msg":' + "1" * 5000 + "}",
            '{"type":"send","group":"lobby","msg":NaN}',
            '{"type":"send","group":"lobby","msg":Infinity}',
            '{"type":"send","group":"lobby","msg":-Infinity}',
            '{"type":"send","group":"lobby","msg":1e400}',
            '{"type":"send","group":"lobby","msg":-1' + "0" * 400 + '.5}',
        ],
    )
    @pytest.mark.parametrize("native", [False, True])
    def test_unparseable_native_frames_get_bad_json(self, text, native):
        assert refused(text, native).code is ErrorCode.BAD_JSON

    def test_the_reason_says_where(self):
        err = refused('{"type":"private","to":"bob","msg":"x",}')
        assert "at character" in err.reason
        assert "4300 digits" in refused('{"type":"send","msg":' + "9" * 5000 + "}").reason
        assert "NaN is not a JSON number" in refused('{"type":"send","msg":NaN}').reason
        assert "too large" in refused('{"type":"send","msg":1e400}').reason

    @pytest.mark.parametrize("kind", ["5", "null", "true", "[]", '{"a":1}'])
    def test_a_type_that_is_not_a_string_is_bad_message(self, kind):
        err = refused('{"type":' + kind + ',"group":"lobby","msg":"x","id":"7"}')
        assert err.code is ErrorCode.BAD_MESSAGE and err.id == "7"
        assert "'type'" in err.reason


class TestNativeConnections:
    @pytest.mark.parametrize("text", ["plain text", "[1, 2]", '"a string"', "42", "{", ""])
    def test_everything_must_be_a_native_request(self, text):
        assert refused(text, native=True).code in (ErrorCode.BAD_JSON, ErrorCode.BAD_MESSAGE)

    @pytest.mark.parametrize(
        "obj",
        [{"username": "x", "msg": "hi"}, {"to_user": "bob", "msg": "hi"}, {"to": "bob", "msg": "secret"}],
    )
    def test_seed_forms_are_not_guessed_at(self, obj):
        err = refused(json.dumps(obj), native=True)
        assert err.code is ErrorCode.BAD_MESSAGE and "'type'" in err.reason

    def test_plain_text_is_bad_json(self):
        assert refused("hello", native=True).code is ErrorCode.BAD_JSON

    def test_native_requests_still_decode(self):
        assert codec.decode('{"type":"join","group":"g","id":1}', native=True) == codec.Join("g", "1")


class TestSeedConnectionsKeepWorking:
    @pytest.mark.parametrize(
        "text",
        [
            "hello {type: none}",
            '{"username":"a","msg":"the \\"type\\": field"',  # broken, but no type key first
            "{not json at all}",
            '{"username":"a","msg":NaN}',
            '{"x":' + "1" * 5000 + "}",
            "[" * DEEP,
            "[" * DEEP + "]" * DEEP,
            '{"x":"\\ud800"}',
        ],
    )
    def test_other_text_is_still_verbatim(self, text):
        assert codec.decode(text) == codec.SendToGroup("lobby", text)

    def test_seed_objects_with_a_type_inside_msg_are_seed(self):
        text = '{"username":"a","msg":{"type":"private","to":"bob"}}'
        assert codec.decode(text) == codec.SendToGroup("lobby", {"type": "private", "to": "bob"})


class TestDepth:
    @pytest.mark.parametrize("native", [False, True])
    @pytest.mark.parametrize(
        "text",
        [
            '{"type":"send","group":"lobby","msg":' + "[" * DEEP + "]" * DEEP + "}",
            '{"type":"send","group":"lobby","msg":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}",
            '{"type":"send","group":"lobby","msg":' + "[" * 100_000,
        ],
    )
    def test_deep_native_frames_are_bad_message_without_recursion(self, text, native):
        err = refused(text, native)
        assert err.code is ErrorCode.BAD_MESSAGE and "deeper than 33" in err.reason

    def test_msg_may_nest_32_deep(self):
        msg = "[" * 32 + "]" * 32
        text = '{"type":"send","group":"lobby","msg":' + msg + "}"
        assert codec.decode(text).msg == json.loads(msg)
        assert refused(text.replace(msg, "[" + msg + "]")).code is ErrorCode.BAD_MESSAGE

    def test_brackets_in_strings_do_not_count(self):
        msg = json.dumps("[{" * DEEP + '\\"' + "[" * 10)
        assert codec.decode('{"type":"send","group":"g","msg":' + msg + "}").msg == json.loads(msg)

    def test_deep_seed_msg_is_plain_text(self):
        text = '{"username":"a","msg":' + "[" * DEEP + "]" * DEEP + "}"
        assert codec.decode(text) == codec.SendToGroup("lobby", text)

    def test_request_id_of_deep_frames_is_none(self):
        assert codec.request_id_of('{"type":"send","id":"1","msg":' + "[" * DEEP) is None
        assert codec.request_id_of("[" * DEEP + "]" * DEEP) is None

    def test_the_depth_scan_does_not_recurse(self):
        limit = sys.getrecursionlimit()
        assert jsontext.nesting_depth("[" * (limit * 10)) == limit * 10
        assert jsontext.nesting_depth('["]]]", {"a": [1]}]') == 3


class TestSurrogates:
    @pytest.mark.parametrize(
        "text",
        [
            '{"type":"send","group":"lobby","msg":"\\ud800","id":"1"}',
            '{"type":"send","group":"lobby","msg":["ok",{"\\udfff":1}],"id":"1"}',
            '{"type":"private","to":"\\ud800","msg":"x","id":"1"}',
            '{"type":"send","group":"lobby","msg":"\\\\\\ud800","id":"1"}',
            '{"type":"send","group":"lobby","msg":"\\ude00\\ud83d","id":"1"}',
        ],
    )
    def test_lone_surrogates_are_bad_message_with_the_id(self, text):
        err = refused(text)
        assert err.code is ErrorCode.BAD_MESSAGE and "surrogate" in err.reason
        assert err.id == "1"

    def test_in_the_id_it_is_refused_without_an_id(self):
        err = refused('{"type":"join","group":"g","id":"\\udc00"}')
        assert err.code is ErrorCode.BAD_MESSAGE and err.id is None
        assert codec.request_id_of('{"type":"join","group":"g","id":"\\udc00"}') is None

    @pytest.mark.parametrize("frame", ['{"to_user":"\\ud800","msg":"x"}', '{"username":"a","msg":"\\ud800"}'])
    def test_seed_commands_too(self, frame):
        assert refused(frame).code is ErrorCode.BAD_MESSAGE

    def test_a_raw_surrogate_in_the_text_is_refused(self):
        assert refused("abc\ud800").code is ErrorCode.BAD_MESSAGE

    def test_pairs_and_escaped_backslashes_are_fine(self):
        text = '{"type":"send","group":"g","msg":["\\ud83d\\ude00","\\\\ud800"]}'
        assert codec.decode(text).msg == ["😀", "\\ud800"]


def test_everything_decoded_encodes_for_browsers():
    command = codec.decode('{"type":"send","group":"g","msg":[1.5e300,-0.0,12345678901234567890]}')
    frame = codec.group_message("g", "a", command.msg)
    assert json.loads(frame, parse_constant=lambda c: pytest.fail(c))["msg"][0] == 1.5e300


def test_server_side_nan_is_refused_not_sent():
    with pytest.raises(ValueError):
        codec.encode({"x": float("nan")})
