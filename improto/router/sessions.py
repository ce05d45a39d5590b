"""
Sessions: one per client connection, and the table of who is connected here.

The router hands each connection a :class:`Session`; everything it knows of
the connection itself is the :class:`SessionLink` it was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from improto.router.ratelimit import TokenBucket


class SessionLink(Protocol):
    """What the router needs from one client connection."""

    def send_frame(self, data: bytes, binary: bool) -> None:
        """Queue one encoded frame for this client."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""

    @classmethod
    def broadcast(cls, links: Sequence[Any], data: bytes, binary: bool) -> None:
        """Send one frame to many links of this class, encoding it once."""


@attrs.define
class Ticket:
    """A connection-to-be, with the subscriptions made ready for it."""

    session_id: str
    channels: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class Session:
    """One connection of one user, as the router sees it."""

    id: str
    user: str
    link: SessionLink
    native: bool
    bucket: TokenBucket
    groups: set[str] = attrs.field(factory=set)
    #: Backend channels this session holds a subscription reference to.
    channels: set[str] = attrs.field(factory=set)
    echo: bool = False
    #: Receives a group's frames but is nobody: no presence, no sending.
    listener: bool = False
    closed: bool = False
    #: Groups this session may join (token mode's ``groups`` claim); None = any.
    allowed_groups: frozenset[str] | None = None
    #: Error codes already logged for this session: log once, not per frame.
    #: Usually none, so one shared empty frozenset until then (a set each is 216 B).
    logged: frozenset[str] = frozenset()
    #: A :class:`improto.router.resume.Replay` while a resume runs, else None.
    replay: Any = None

    @property
    def is_person(self) -> bool:
        """A chat user: counted in presence, may send (not echo, not a feed)."""
        return not (self.echo or self.listener)


class SessionTable:
    """
    The sessions of this node, by id and by user, and how many speak the
    native dialect (with none, presence envelopes have nobody to go to here).
    """

    def __init__(self) -> None:
        self.by_id: dict[str, Session] = {}
        self.by_user: dict[str, set[Session]] = {}
        self.native_count = 0

    def add(self, session: Session) -> None:
        self.by_id[session.id] = session
        if session.native:
            self.native_count += 1
        if session.is_person:
            self.by_user.setdefault(session.user, set()).add(session)

    def became_native(self, session: Session) -> None:
        """A seed-route client spoke the native dialect: count it from now on."""
        if not session.native:
            session.native = True
            self.native_count += 1

    def remove(self, session: Session) -> bool:
        """Forget ``session``; True when it was its user's last one here."""
        del self.by_id[session.id]
        if session.native:
            self.native_count -= 1
        if not session.is_person:
            return False
        sessions = self.by_user.get(session.user, set())
        sessions.discard(session)
        if sessions:
            return False
        self.by_user.pop(session.user, None)
        return True

    def of_user(self, user: str) -> set[Session]:
        return self.by_user.get(user, set())
