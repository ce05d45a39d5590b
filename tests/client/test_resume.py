"""
Resume in ChatState, sans IO: the URL a reconnect dials, the ``resume``
frames after re-joins, replayed messages shown once, gaps, stored acks,
and unconfirmed sends resent under their ids.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from improto.client.cli import connection_target
from improto.client.resume import Resume, with_resume
from improto.client.state import ChatState
from tests.client.test_state import frame, join, new_state, texts, welcome

BASE = "ws://127.0.0.1:8080/ws/alice"


def message(group: str, seq: int, msg: str, sender: str = "bob") -> str:
    return frame(type="message", group=group, sender=sender, username=sender, from_user=sender,
                 msg=msg, stream=f"group:{group}", seq=seq)


def private(seq: int, msg: str, sender: str = "bob", to: str = "alice", stream: str = "user:alice") -> str:
    return frame(type="private", sender=sender, username=sender, from_user=sender, to=to, msg=msg,
                 stream=stream, seq=seq)


@pytest.fixture
def state() -> ChatState:
    state = new_state()
    state.on_frame(welcome())
    return state


def test_a_first_connection_asks_for_no_resume(state: ChatState) -> None:
    assert state.url(BASE) == BASE


def test_the_url_resumes_the_lobby_and_the_private_stream_and_keeps_the_token(state: ChatState) -> None:
    join(state, "dev")
    state.on_frame(message("lobby", 41, "hi"))
    state.on_frame(message("dev", 12, "in dev"))
    state.on_frame(private(7, "psst"))
    url, _ = connection_target(BASE, "abc.DEF-123_x")
    dialed = state.url(url)
    query = parse_qs(urlsplit(dialed).query)
    # dev is not in a fresh connection's streams: it is resumed by frame once re-joined.
    assert query == {"token": ["abc.DEF-123_x"], "resume": ["group:lobby:41,user:alice:7"]}
    assert urlsplit(dialed).path == "/ws/alice"
    # A resume already in the URL is replaced, not repeated.
    assert parse_qs(urlsplit(state.url(dialed)).query)["resume"] == ["group:lobby:41,user:alice:7"]


def test_with_resume_keeps_every_other_parameter() -> None:
    assert with_resume("ws://h/ws/a?token=t&x=1", {"group:lobby": 3}) == (
        "ws://h/ws/a?token=t&x=1&resume=group:lobby:3"
    )
    assert with_resume("ws://h/ws/a?resume=group:lobby:3&token=t", {}) == "ws://h/ws/a?token=t"


def test_a_rejoined_group_is_resumed_by_frame_after_its_ack(state: ChatState) -> None:
    join(state, "dev")
    join(state, "ops")  # nothing seen in ops: nothing to resume there
    state.on_frame(message("dev", 12, "in dev"))
    state.on_closed(1006, "")
    back = state.on_frame(welcome())
    [dev, ops] = back.frames
    assert state.on_frame(frame(type="ack", id=ops["id"])).frames == []
    resumed = state.on_frame(frame(type="ack", id=dev["id"]))
    assert resumed.lines == []
    [request] = resumed.frames
    assert request["type"] == "resume" and request["streams"] == {"group:dev": 12} and request["id"]


def test_a_group_the_server_kept_is_resumed_right_after_the_welcome(state: ChatState) -> None:
    join(state, "dev")
    state.on_frame(message("dev", 5, "x"))
    state.on_closed(1006, "")
    back = state.on_frame(welcome(groups=("lobby", "dev")))
    assert [(f["type"], f.get("streams")) for f in back.frames] == [("resume", {"group:dev": 5})]


def test_replayed_messages_show_once(state: ChatState) -> None:
    assert texts(state.on_frame(message("lobby", 1, "one")))
    assert texts(state.on_frame(message("lobby", 2, "two")))
    state.on_closed(1006, "")
    state.on_frame(welcome())
    # The replay overlaps what was shown (e.g. a resume raced a live delivery).
    shown = [texts(state.on_frame(message("lobby", seq, text)))
             for seq, text in ((2, "two"), (3, "three"), (3, "three"), (1, "one"), (4, "four"))]
    assert shown == [[], ["09:05 [lobby] bob: three"], [], [], ["09:05 [lobby] bob: four"]]
    assert state.on_frame(frame(type="resumed", streams={"group:lobby": 4}, id="r1")).lines == []


def test_an_own_acked_message_is_not_shown_again_by_a_replay(state: ChatState) -> None:
    state.on_frame(message("lobby", 1, "before"))
    [sent] = state.on_input("mine").frames
    acked = state.on_frame(frame(type="ack", id=sent["id"], stream="group:lobby", seq=2, status="delivered"))
    assert texts(acked) == ["09:05 [lobby] alice: mine"]
    assert state.url(BASE).endswith("resume=group:lobby:2")
    assert texts(state.on_frame(message("lobby", 2, "mine", sender="alice"))) == []
    # An ack ahead of what was seen (bob's 3 not here yet) does not hide bob's 3.
    [again] = state.on_input("mine too").frames
    state.on_frame(frame(type="ack", id=again["id"], stream="group:lobby", seq=4, status="delivered"))
    assert texts(state.on_frame(message("lobby", 3, "bob's"))) == ["09:05 [lobby] bob: bob's"]
    assert texts(state.on_frame(message("lobby", 4, "mine too", sender="alice"))) == []
    assert state.resume.last["group:lobby"] == 4


def test_the_copy_of_an_own_private_is_not_shown_again(state: ChatState) -> None:
    [sent] = state.on_input("/msg bob lunch?").frames
    state.on_frame(frame(type="ack", id=sent["id"], stream="user:bob", seq=3, status="delivered"))
    copy = private(8, "lunch?", sender="alice", to="bob", stream="user:alice")
    assert texts(state.on_frame(copy)) == []
    # A copy of what another device of alice's sent is news.
    other = private(9, "from my phone", sender="alice", to="bob", stream="user:alice")
    assert texts(state.on_frame(other)) == ["09:05 [private → bob] alice: from my phone"]


def test_a_gap_is_a_readable_line(state: ChatState) -> None:
    join(state, "dev")
    state.on_frame(message("dev", 29, "x"))
    lost = state.on_frame(frame(type="gap", stream="group:dev", from_seq=30, to_seq=41))
    assert texts(lost) == ["09:05 -- 12 messages in dev were lost (seq 30-41)"]
    one = state.on_frame(frame(type="gap", stream="user:alice", from_seq=2, to_seq=2))
    assert texts(one) == ["09:05 -- 1 message in your private messages was lost (seq 2)"]
    assert state.resume.last["group:dev"] == 41
    assert texts(state.on_frame(message("dev", 42, "after the gap"))) == ["09:05 [dev] bob: after the gap"]


def test_a_stored_ack_is_shown_as_such(state: ChatState) -> None:
    [sent] = state.on_input("/msg bob see you tomorrow").frames
    stored = state.on_frame(frame(type="ack", id=sent["id"], stream="user:bob", seq=4, status="stored"))
    assert texts(stored) == ["09:05 [private → bob] alice: see you tomorrow ✓ stored for bob (offline)"]
    [sent] = state.on_input("/msg bob now?").frames
    delivered = state.on_frame(frame(type="ack", id=sent["id"], stream="user:bob", seq=5, status="delivered"))
    assert texts(delivered) == ["09:05 [private → bob] alice: now?"]


def test_an_unconfirmed_send_goes_again_with_the_same_id(state: ChatState) -> None:
    [sent] = state.on_input("did this arrive?").frames
    [private_sent] = state.on_input("/msg bob and this?").frames
    closed = state.on_closed(1006, "")
    assert not any("not confirmed" in line for line in texts(closed))
    back = state.on_frame(welcome())
    assert back.frames == [sent, private_sent]
    assert texts(back) == ["09:05 -- reconnected as alice; resending 2 unconfirmed"]
    # The server had stored the first: it acks the repeat with the first seq, once.
    first = state.on_frame(frame(type="ack", id=sent["id"], stream="group:lobby", seq=7, status="delivered"))
    assert texts(first) == ["09:05 [lobby] alice: did this arrive?"]
    assert state.on_frame(frame(type="ack", id=sent["id"], stream="group:lobby", seq=7)).lines == []
    assert [p.request for p in state.pending.values()] == [private_sent]


def test_a_hook_that_resends_nothing_marks_the_send_unconfirmed() -> None:
    class NoResend(Resume):
        def on_lost(self, requests: list[dict[str, object]]) -> list[dict[str, object]]:
            return []

    state = new_state(resume=NoResend())
    state.on_frame(welcome())
    state.on_input("lost")
    closed = state.on_closed(1006, "")
    assert texts(closed)[0] == "09:05 [lobby] alice: lost ? not confirmed: the connection was lost"
    assert state.pending == {} and state.on_frame(welcome()).frames == []


def test_a_server_without_history_resets_everything(state: ChatState) -> None:
    state.on_frame(message("lobby", 3, "x"))
    refused = state.on_frame(frame(type="error", code="bad_resume",
                                   reason="This server keeps no history; there is nothing to resume."))
    assert texts(refused) == ["09:05 -- the server keeps no history; nothing to catch up on"]
    assert state.resume.last == {} and state.url(BASE) == BASE


def test_a_server_that_lost_its_history_starts_the_streams_afresh(state: ChatState) -> None:
    join(state, "dev")
    state.on_frame(message("lobby", 9, "old"))
    state.on_frame(message("dev", 5, "old"))
    state.on_closed(1001, "")
    # A memory server restarted: its streams number from 1 again.
    refused = state.on_frame(frame(type="error", code="bad_resume",
                                   reason="Stream 'group:lobby' has no seq 9: its last is 0."))
    assert texts(refused) == [
        "09:05 -- the server no longer has the history of lobby; nothing to catch up on"
    ]
    assert "group:lobby" not in state.resume.last and state.resume.last["group:dev"] == 5
    assert texts(state.on_frame(message("lobby", 1, "new"))) == ["09:05 [lobby] bob: new"]
    # A resumed frame reaching lower than what was seen says the same.
    state.on_frame(frame(type="resumed", streams={"group:dev": 0}, id="r1"))
    assert texts(state.on_frame(message("dev", 1, "new in dev"))) == ["09:05 [dev] bob: new in dev"]


def test_unnumbered_messages_are_always_shown(state: ChatState) -> None:
    plain = frame(type="message", group="lobby", sender="bob", msg="no history here")
    assert texts(state.on_frame(plain)) == texts(state.on_frame(plain)) != []
