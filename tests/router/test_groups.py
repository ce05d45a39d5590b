"""GroupMembership: which sessions, and which users, are in a group on this node."""

from __future__ import annotations

from improto.router.groups import GroupMembership
from improto.router.ratelimit import TokenBucket
from improto.router.sessions import Session
from tests.fakes import FakeLink


def session(sid: str, user: str, listener: bool = False) -> Session:
    s = Session(sid, user, FakeLink(), False, TokenBucket(0, 0))
    s.listener = listener
    return s


def test_a_user_arrives_with_its_first_session_and_leaves_with_its_last() -> None:
    groups = GroupMembership()
    phone, laptop, viewer = session("1", "alice"), session("2", "alice"), session("3", "", listener=True)
    assert groups.add(phone, "room") is True
    assert groups.add(laptop, "room") is False
    assert groups.add(viewer, "room") is False  # a listener is nobody
    assert groups.members("room") == {phone, laptop, viewer}
    assert groups.remove(phone, "room") is False
    assert groups.remove(viewer, "room") is False
    assert groups.remove(laptop, "room") is True
    assert len(groups) == 0 and groups.members("room") == set()
    assert phone.groups == laptop.groups == set()


def test_removing_a_session_that_is_not_there_changes_nothing() -> None:
    groups = GroupMembership()
    alice, other = session("1", "alice"), session("2", "alice")
    groups.add(alice, "room")
    assert groups.remove(other, "room") is False
    assert groups.remove(other, "elsewhere") is False
    assert groups.members("room") == {alice} and len(groups) == 1
    assert groups.remove(alice, "room") is True
