"""Group membership on this node: which sessions, and which users, are in a group."""

from __future__ import annotations

from collections import Counter

from improto.router.sessions import Session


class GroupMembership:
    """
    Local members of every group. Joins and leaves ask "is this user still
    in the group here?", so it counts each user's sessions per group and
    answers in O(1); empty groups are forgotten at once.
    """

    def __init__(self) -> None:
        self._members: dict[str, set[Session]] = {}
        #: group -> user -> that user's (non-listener) sessions in the group.
        self._users: dict[str, Counter[str]] = {}

    def members(self, group: str) -> set[Session]:
        return self._members.get(group, set())

    def __len__(self) -> int:
        return len(self._members)

    def add(self, session: Session, group: str) -> bool:
        """Put ``session`` in ``group``; True when its user was not in it here."""
        session.groups.add(group)
        members = self._members.setdefault(group, set())
        users = self._users.setdefault(group, Counter())
        first = users[session.user] == 0
        members.add(session)
        if session.listener:
            return False
        users[session.user] += 1
        return first

    def remove(self, session: Session, group: str) -> bool:
        """Take ``session`` out of ``group``; True when its user is gone from it here."""
        session.groups.discard(group)
        members = self._members.get(group, set())
        users = self._users.get(group, Counter())
        if session in members and not session.listener:
            users[session.user] -= 1
            if users[session.user] <= 0:
                del users[session.user]
        members.discard(session)
        if not members:
            self._members.pop(group, None)
            self._users.pop(group, None)
        return not session.listener and not users.get(session.user)
