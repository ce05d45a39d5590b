"""Properties of the codec over any frame: it answers, and what it answers encodes."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from improto.protocol import codec, jsontext
from improto.protocol.codec import ProtocolError
from improto.protocol.names import skeleton
from tests.protocol.fuzzing import frames


def browser_json(data: bytes) -> object:
    """JSON.parse's view: UTF-8 text, no NaN or Infinity."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a frame")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


@given(frames, st.booleans())
def test_decode_answers_every_frame_with_a_command_or_a_precise_error(text, native):
    try:
        command = codec.decode(text, native=native)
    except ProtocolError as e:
        assert e.reason.endswith(".")
        assert browser_json(codec.error(e, native))["code"] == e.code.value
        return
    if native:
        assert command.native
    match command:
        case codec.SendToGroup():
            frame = codec.group_message(command.group, "alice", command.msg)
        case codec.SendToUser():
            frame = codec.private_message("alice", command.to, command.msg)
        case _:
            frame = codec.who(command.group, [], command.id)
    browser_json(frame)
    if command.id is not None:
        browser_json(codec.ack(command.id))
        assert command.id == codec.request_id_of(text)


@given(frames)
def test_a_frame_that_looks_native_is_read_as_native_unless_it_is_seed_json(text):
    try:
        command = codec.decode(text)
    except ProtocolError:
        return
    if codec.looks_native(text) and not command.native:
        # Only a well-formed seed object (no top-level type) is read as seed.
        obj = jsontext.parse(text)
        assert isinstance(obj, dict) and "type" not in obj


@given(frames)
def test_request_id_of_never_raises(text):
    request_id = codec.request_id_of(text)
    assert request_id is None or len(request_id) <= codec.MAX_ID_LENGTH


@given(st.text(max_size=40) | st.sampled_from(["іmproto", "cafe\u0301", "ｉｍｐｒｏｔｏ"]))
def test_accepted_names_are_canonical_and_not_the_system_name(name):
    try:
        canonical = codec.check_name(name)
    except ProtocolError as e:
        assert e.code is codec.ErrorCode.BAD_NAME
        return
    assert unicodedata.is_normalized("NFKC", canonical)
    assert codec.check_name(canonical) == canonical
    assert skeleton(canonical) != codec.SYSTEM_NAME
    browser_json(codec.welcome(canonical, "s", ["lobby"]))


@given(st.sampled_from(["online", "offline", "join", "leave"]), st.text(), st.none() | st.text())
def test_presence_frames_are_the_encoders_bytes(event, user, group):
    """codec.presence builds its JSON by hand: the same bytes as encode() of the dict."""
    body = {"type": "presence", "event": event, "user": user}
    if group is not None:
        body["group"] = group
    try:
        expected = codec.encode(body)
    except UnicodeEncodeError:  # lone surrogates: refused alike
        with pytest.raises(UnicodeEncodeError):
            codec.presence(event, user, group)
        return
    assert codec.presence(event, user, group) == expected
