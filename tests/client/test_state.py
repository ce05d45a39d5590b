"""
ChatState without sockets: server frames and typed lines in, display lines
and request frames out; acks, errors, reconnects and the toolbar.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from improto.client.backoff import Backoff
from improto.client.state import ChatState, Effects, Status

AT = datetime(2026, 12, 2, 9, 5)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def welcome(user: str = "alice", groups: tuple[str, ...] = ("lobby",)) -> str:
    return frame(type="welcome", user=user, session="s-1", groups=list(groups))


def texts(effects: Effects) -> list[str]:
    return [line.plain() for line in effects.lines]


def new_state(**kwargs: Any) -> ChatState:
    state = ChatState("alice", "127.0.0.1:8080", clock=lambda: AT, monotonic=lambda: 100.0,
                      backoff=Backoff(random=lambda: 0.0), **kwargs)
    state.connecting()
    return state


@pytest.fixture
def state() -> ChatState:
    state = new_state()
    state.on_frame(welcome())
    return state


def join(state: ChatState, group: str) -> None:
    [request] = state.on_input(f"/join {group}").frames
    state.on_frame(frame(type="ack", id=request["id"]))


def test_welcome_puts_the_user_in_the_lobby(state: ChatState) -> None:
    assert state.status is Status.CONNECTED
    assert state.current == "lobby" and list(state.groups) == ["lobby"]
    assert state.prompt() == "lobby> "
    assert state.toolbar() == "online as alice | in lobby"


def test_plain_text_goes_to_the_current_group_and_shows_once_acked(state: ChatState) -> None:
    effects = state.on_input("hello all")
    [request] = effects.frames
    assert request == {"type": "send", "group": "lobby", "msg": "hello all", "id": request["id"]}
    assert effects.lines == []  # not in the scrollback yet: pending
    assert state.toolbar() == "online as alice | in lobby | 1 pending: hello all"
    acked = state.on_frame(frame(type="ack", id=request["id"]))
    assert texts(acked) == ["09:05 [lobby] alice: hello all"]
    assert state.pending == {}
    assert "pending" not in state.toolbar()


def test_an_error_for_the_id_marks_the_message_failed(state: ChatState) -> None:
    [request] = state.on_input("/msg nobody hello?").frames
    assert request["type"] == "private" and request["to"] == "nobody"
    failed = state.on_frame(frame(type="error", code="unknown_user",
                                  reason="User 'nobody' is not online.", id=request["id"]))
    assert texts(failed) == [
        "09:05 [private → nobody] alice: hello? ✗ failed: unknown_user: User 'nobody' is not online."
    ]
    assert state.pending == {}


def test_ids_are_unique_for_the_whole_run(state: ChatState) -> None:
    ids = [state.on_input(f"m{i}").frames[0]["id"] for i in range(5)]
    state.on_closed(1006, "")
    state.on_frame(welcome())
    ids.append(state.on_input("after").frames[0]["id"])
    assert len(set(ids)) == 6


def test_join_switches_to_the_group_once_acked(state: ChatState) -> None:
    [request] = state.on_input("/join dev").frames
    assert request["type"] == "join" and request["group"] == "dev"
    assert state.current == "lobby"
    assert texts(state.on_frame(frame(type="ack", id=request["id"]))) == [
        "09:05 -- joined dev; now talking in it"
    ]
    assert state.current == "dev" and list(state.groups) == ["lobby", "dev"]
    assert state.on_input("hi dev").frames[0]["group"] == "dev"
    assert texts(state.on_input("/to lobby")) == ["09:05 -- now talking in lobby"]
    assert state.on_input("hi lobby").frames[0]["group"] == "lobby"


def test_to_a_group_one_is_not_in_is_refused_locally(state: ChatState) -> None:
    effects = state.on_input("/to ops")
    assert effects.frames == [] and texts(effects) == ["09:05 !! you are not in ops; /join ops first"]
    assert state.current == "lobby"


def test_bad_names_are_refused_before_anything_is_sent(state: ChatState) -> None:
    for line in ("/join a/b", "/join " + "g" * 65, "/msg improto hi"):
        effects = state.on_input(line)
        assert effects.frames == [] and effects.lines[0].text.startswith("The "), line


def test_leaving_the_current_group_falls_back_to_the_lobby(state: ChatState) -> None:
    join(state, "dev")
    [request] = state.on_input("/leave").frames
    assert request["group"] == "dev"
    assert texts(state.on_frame(frame(type="ack", id=request["id"]))) == [
        "09:05 -- left dev; now talking in lobby"
    ]
    [request] = state.on_input("/leave lobby").frames
    state.on_frame(frame(type="ack", id=request["id"]))
    assert state.current is None and state.prompt() == "-> "
    assert texts(state.on_input("anyone?")) == ["09:05 !! you are in no group; /join GROUP first"]


def test_who_defaults_to_the_current_group(state: ChatState) -> None:
    [request] = state.on_input("/who").frames
    assert request["type"] == "who" and request["group"] == "lobby"
    answer = state.on_frame(frame(type="who", group="lobby", users=["alice", "bob"], id=request["id"]))
    assert texts(answer) == ["09:05 -- in lobby (2): alice, bob"]
    assert state.pending == {}


def test_server_frames_become_lines(state: ChatState) -> None:
    cases = {
        frame(type="message", group="dev", sender="max", username="max", msg="build is green"):
            "09:05 [dev] max: build is green",
        frame(type="message", group="dev", sender="max", msg={"emoji": "🎉"}):
            '09:05 [dev] max: {"emoji": "🎉"}',
        frame(type="private", sender="bob", to="alice", msg="psst"): "09:05 [private] bob: psst",
        # A copy of what another of alice's devices sent.
        frame(type="private", sender="alice", to="bob", msg="on my way"):
            "09:05 [private → bob] alice: on my way",
        frame(type="presence", event="join", user="max", group="dev"): "09:05 -- max joined dev",
        frame(type="presence", event="leave", user="max", group="dev"): "09:05 -- max left dev",
        frame(type="presence", event="online", user="max"): "09:05 -- max is online",
        frame(type="presence", event="offline", user="max"): "09:05 -- max went offline",
        frame(type="error", code="rate_limited", reason="Too many messages."):
            "09:05 !! rate_limited: Too many messages.",
        "not json": "09:05 !! the server sent a frame that is not a JSON object: not json",
    }
    for text, shown in cases.items():
        assert texts(state.on_frame(text)) == [shown], text


def test_typing_before_the_welcome_sends_nothing() -> None:
    state = new_state()
    effects = state.on_input("too early")
    assert effects.frames == [] and "not connected" in texts(effects)[0]


def test_a_lost_connection_backs_off_and_rejoins_on_reconnect(state: ChatState) -> None:
    join(state, "dev")
    join(state, "ops")
    [leave] = state.on_input("/leave lobby").frames
    state.on_frame(frame(type="ack", id=leave["id"]))
    state.on_input("/to dev")
    [sent] = state.on_input("lost in transit").frames

    closed = state.on_closed(1001, "server is shutting down")
    assert closed.retry_in == 0.25
    assert texts(closed) == [
        "09:05 -- disconnected (close 1001, server is shutting down); retrying in 0.2 s (attempt 1)",
    ]
    # The unconfirmed message stays pending, to go again after the reconnect.
    assert state.status is Status.WAITING and [p.request["msg"] for p in state.pending.values()] == [
        "lost in transit"
    ]
    assert state.toolbar() == "offline: retry 1 in 0 s | 1 pending: lost in transit"
    assert state.on_input("/who").frames == []

    state.connecting()
    refused = state.on_closed(None, "connection refused")
    assert refused.retry_in == 0.5
    assert texts(refused) == [
        "09:05 -- could not connect (connection refused); retrying in 0.5 s (attempt 2)"
    ]

    state.connecting()
    back = state.on_frame(welcome(groups=("lobby",)))
    assert texts(back) == ["09:05 -- reconnected as alice; re-joining dev, ops; resending 1 unconfirmed"]
    assert [(f["type"], f["group"]) for f in back.frames] == [
        ("join", "dev"), ("join", "ops"), ("leave", "lobby"), ("send", "dev"),
    ]
    resent = back.frames[-1]
    assert resent == sent  # the same frame, the same id: the server deduplicates by it
    assert state.on_frame(frame(type="ack", id=resent["id"], stream="group:dev", seq=1,
                                status="delivered")).lines[0].plain() == "09:05 [dev] alice: lost in transit"
    back.frames.pop()
    assert state.backoff.attempt == 0  # a welcome resets the backoff
    # The re-joins are quiet: no "joined" lines, no switch of the current group.
    for request in back.frames:
        assert state.on_frame(frame(type="ack", id=request["id"])).lines == []
    assert state.current == "dev" and list(state.groups) == ["dev", "ops"]
    assert "pending" not in state.toolbar()


def test_a_failed_rejoin_drops_the_group(state: ChatState) -> None:
    join(state, "dev")
    state.on_closed(1006, "")
    back = state.on_frame(welcome())
    [rejoin] = back.frames
    failed = state.on_frame(frame(type="error", code="bad_message", reason="Too many groups.",
                                  id=rejoin["id"]))
    assert texts(failed) == ["09:05 !! could not join dev: bad_message: Too many groups."]
    assert list(state.groups) == ["lobby"] and state.current == "lobby"


@pytest.mark.parametrize("code, meaning", [(4401, "not authenticated"), (4403, "forbidden"),
                                           (1008, "refused by policy")])
def test_auth_closes_are_final(state: ChatState, code: int, meaning: str) -> None:
    closed = state.on_closed(code, "token expired")
    assert closed.retry_in is None and state.status is Status.CLOSED
    [line] = texts(closed)
    assert line.startswith(f"09:05 !! connection refused for good (close {code}, {meaning}")
    assert "token expired" in line and line.endswith("not retrying")
    assert state.toolbar().startswith(f"closed: close {code}")


def test_a_final_handshake_refusal(state: ChatState) -> None:
    closed = state.on_closed(None, "HTTP 401 Unauthorized", final=True)
    assert closed.retry_in is None
    assert texts(closed) == ["09:05 !! connection refused for good (HTTP 401 Unauthorized); not retrying"]


def test_the_toolbar_fits_the_terminal(state: ChatState) -> None:
    for i in range(30):
        join(state, f"group-number-{i}")
    assert len(state.toolbar(80)) == 79 and state.toolbar(80).endswith("…")
