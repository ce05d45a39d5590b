"""Group membership on this node: which sessions, and which users, are in a group."""

from __future__ import annotations

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
        self._users: dict[str, dict[str, int]] = {}

    def members(self, group: str) -> set[Session]:
        return self._members.get(group, set())

    def __len__(self) -> int:
        return len(self._members)

    def add(self, session: Session, group: str) -> bool:
        """Put ``session`` in ``group``; True when its user was not in it here."""
        session.groups.add(group)
        members = self._members.get(group)
        if members is None:
            members = self._members[group] = set()
            self._users[group] = {}
        members.add(session)
        if session.listener:
            return False
        users = self._users[group]
        count = users.get(session.user, 0)
        users[session.user] = count + 1
        return count == 0

    def remove(self, session: Session, group: str) -> bool:
        """Take ``session`` out of ``group``; True when its user is gone from it here."""
        session.groups.discard(group)
        members = self._members.get(group)
        if members is None or session not in members:
            return False
        members.discard(session)
        users = self._users[group]
        gone = False
        if not session.listener:
            count = users[session.user] - 1
            if count:
                users[session.user] = count
            else:
                del users[session.user]
                gone = True
        if not members:
            del self._members[group]
            del self._users[group]
        return gone
