"""Bad input on the router: precise errors, nothing leaked, logged once, throttled."""

from __future__ import annotations

import json

import pytest

from improto.router import RouterLimits
from tests.fakes import FakeClock, FakeLink, make_router

#: Every test here with the memory backend's immediate calls and with Deferreds (conftest.py).
pytestmark = pytest.mark.usefixtures("backend_calls")

DEEP = 1000


def connect(router, user, native=False):
    link = FakeLink()
    session = router.connect(link, user, native=native)
    link.take()
    return link, session


def send(router, session, text):
    router.receive_text(session, text, len(text.encode("utf-8")))


def strict_json(data: bytes):
    """What a browser's JSON.parse accepts: UTF-8, no NaN or Infinity."""
    return json.loads(data.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"{c} sent"))


@pytest.fixture
def router():
    return make_router(limits=RouterLimits(rate=0))


@pytest.fixture
def lobby(router):
    """Two bystanders in the lobby, one of each dialect."""
    bob, _ = connect(router, "bob")
    nat, _ = connect(router, "nat", native=True)
    return bob, nat


LEAKS = [
    '{"type":"private","to":"bob","msg":"my password",}',
    '{"type":5,"to":"bob","msg":"my password"}',
    '{"type":"private","to":"bob","msg":"my password","n":' + "1" * 5000 + "}",
    '{"type":"private","to":"bob","msg":NaN}',
    '{"type":"send","group":"lobby","msg":1e400}',
    '{"type":"send","group":"lobby","msg":' + "[" * DEEP + "]" * DEEP + "}",
]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("text", LEAKS)
def test_broken_native_frames_are_refused_and_reach_nobody(router, lobby, text, native):
    alice, sa = connect(router, "alice", native=native)
    send(router, sa, text)
    [error] = alice.take()
    assert error["type"] == "error" and error["code"] in ("bad_json", "bad_message")
    for bystander in lobby:
        assert [f for f in bystander.take() if f["type"] == "message"] == []


def test_a_connection_that_spoke_native_is_read_as_native(router, lobby):
    alice, sa = connect(router, "alice")
    send(router, sa, '{"type":"join","group":"dev","id":"1"}')
    assert alice.take() == [{"type": "ack", "id": "1"}]
    for text in ("hello", '{"username":"alice","msg":"hi"}', '{"to":"bob","msg":"secret"}'):
        send(router, sa, text)
    assert [f["code"] for f in alice.take()] == ["bad_json", "bad_message", "bad_message"]
    assert [f for f in lobby[0].take() + lobby[1].take() if f["type"] == "message"] == []


def test_seed_pages_still_chat(router, lobby):
    bob, nat = lobby
    alice, sa = connect(router, "alice")
    for text in ('{"username":"alice","msg":"hi"}', "plain {text}", '{"msg":"a",}', "[" * DEEP):
        send(router, sa, text)
    assert alice.take() == []
    assert [f["msg"] for f in bob.take()] == ["hi", "plain {text}", '{"msg":"a",}', "[" * DEEP]


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"send","group":"lobby","msg":"\\ud800","id":"s1"}',
        '{"type":"private","to":"\\udbff","msg":"x","id":"s1"}',
        '{"type":"join","group":"g","id":"\\ud800"}',
        '{"type":"send","group":"lobby","msg":{"\\udfff":["\\ud800"]},"id":"s1"}',
        '{"to_user":"bob","msg":"\\ud800"}',
    ],
)
def test_lone_surrogates_are_refused_and_the_connection_lives(router, lobby, text, caplog_events):
    alice, sa = connect(router, "alice", native=True)
    send(router, sa, text)
    [error] = alice.frames
    assert strict_json(error[0])["code"] == "bad_message"
    assert strict_json(error[0]).get("id") in (None, "s1")
    send(router, sa, '{"type":"send","group":"lobby","msg":"still here","id":"2"}')
    last = alice.take()[-1]
    assert (last["type"], last["id"], last["status"]) == ("ack", "2", "delivered")
    assert not [e for e in caplog_events if e.get("log_failure")]


def test_too_large_deep_frames_are_refused_without_recursion(caplog_events):
    router = make_router(limits=RouterLimits(max_message_size=100, rate=0))
    alice, sa = connect(router, "alice")
    for text in ("[" * DEEP + "]" * DEEP, '{"type":"send","id":"1","msg":' + "{" * DEEP):
        send(router, sa, text)
    assert [(f["code"], f.get("id")) for f in alice.take()] == [("too_large", None)] * 2
    assert not [e for e in caplog_events if e.get("log_failure")]


def test_each_code_is_logged_once_per_connection(router, caplog_events):
    alice, sa = connect(router, "alice", native=True)
    for text in LEAKS * 20:
        send(router, sa, text)
    assert len(alice.take()) == len(LEAKS) * 20
    refused = [e["code"] for e in caplog_events if "Refused a frame" in e.get("log_format", "")]
    assert sorted(refused) == ["bad_json", "bad_message"]


def test_frames_refused_while_decoding_cost_rate_tokens():
    router = make_router(limits=RouterLimits(rate=1, burst=5))
    alice, sa = connect(router, "alice", native=True)
    for i in range(1000):
        send(router, sa, json.dumps({"type": "nope", "id": i}))
    codes = [f["code"] for f in alice.take()]
    assert codes[:5] == ["unknown_type"] * 5
    assert codes[5:] == ["rate_limited"] * 995
    assert alice.frames == []


def test_rate_limited_errors_name_the_request(router):
    router = make_router(limits=RouterLimits(rate=1, burst=1))
    alice, sa = connect(router, "alice", native=True)
    send(router, sa, '{"type":"who","group":"lobby","id":"a"}')
    send(router, sa, '{"type":"who","group":"lobby","id":"b"}')
    assert [f.get("id") for f in alice.take()] == ["a", "b"]


def test_too_large_frames_cost_rate_tokens_too():
    router = make_router(limits=RouterLimits(max_message_size=10, rate=1, burst=2))
    alice, sa = connect(router, "alice")
    for _ in range(4):
        send(router, sa, "x" * 11)
    assert [f["code"] for f in alice.take()] == ["too_large"] * 2 + ["rate_limited"] * 2


def test_echo_connections_are_rate_limited_like_chat():
    clock = FakeClock()
    router = make_router(limits=RouterLimits(rate=2, burst=3), clock=clock)
    link = FakeLink()
    session = router.connect_echo(link)
    for i in range(5):
        router.receive_text(session, str(i), 1)
    router.receive_binary(session, b"\x00")
    frames = [data for data, _ in link.frames]
    assert frames[:3] == [b"0", b"1", b"2"]
    errors = [json.loads(f) for f in frames[3:]]
    # A plain error frame, not a seed page's chat line.
    assert errors == [
        {"type": "error", "code": "rate_limited", "reason": errors[0]["reason"]}
    ] * 3
    clock.now += 1.0
    router.receive_text(session, "later", 5)
    assert link.frames[-1] == (b"later", False)


def test_echo_rate_limit_is_off_with_rate_0():
    router = make_router(limits=RouterLimits(rate=0))
    link = FakeLink()
    session = router.connect_echo(link)
    for i in range(1000):
        router.receive_text(session, str(i), len(str(i)))
    assert len(link.frames) == 1000 and link.frames[-1] == (b"999", False)


def test_a_bug_handling_a_frame_is_one_traceback_and_an_answer(router, monkeypatch, caplog_events):
    alice, sa = connect(router, "alice", native=True)

    def broken(session, command):
        raise RuntimeError("bug")

    monkeypatch.setattr(router._inbound, "_who", broken)
    for i in range(3):
        send(router, sa, json.dumps({"type": "who", "group": "lobby", "id": str(i)}))
    assert [(f["code"], f["id"]) for f in alice.take()] == [
        ("backend_unavailable", "0"), ("backend_unavailable", "1"), ("backend_unavailable", "2")
    ]
    assert len([e for e in caplog_events if e.get("log_failure")]) == 1
    send(router, sa, '{"type":"join","group":"g","id":"ok"}')
    assert alice.take() == [{"type": "ack", "id": "ok"}]


def test_private_messages_find_a_user_by_any_spelling_of_the_name(router):
    cafe, _ = connect(router, "café")
    alice, sa = connect(router, "alice", native=True)
    send(router, sa, '{"type":"private","to":"cafe\\u0301","msg":"hi","id":"1"}')
    assert alice.take() == [{"type": "ack", "id": "1"}]
    assert [f["msg"] for f in cafe.take()] == ["hi"]
