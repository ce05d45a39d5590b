"""
The router: users, their sessions, groups, and who gets which frame.

It is sans-IO: it talks to connections through :class:`SessionLink` and to
other nodes through an :class:`~improto.backend.IBackend`, and it never
touches a socket, a reactor or Redis. Every delivery, even to a member on
this very node, goes through the backend, so one code path serves one
node and many.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto import codec
from improto.backend import Audience, BackendUnavailable, Envelope, IBackend
from improto.codec import ErrorCode, ProtocolError
from improto.ratelimit import TokenBucket
from improto.subscriptions import Subscriptions

_log = Logger()

#: Presence scope of users connected anywhere in the cluster.
ONLINE_SCOPE = "online"
MAX_GROUPS_PER_SESSION = 256


class SessionLink(Protocol):
    """What the router needs from one client connection."""

    def send_frame(self, data: bytes, binary: bool) -> None:
        """Queue one encoded frame for this client."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""

    @classmethod
    def broadcast(cls, links: Sequence[Any], data: bytes, binary: bool) -> None:
        """Send one frame to many links of this class, encoding it once."""


def send_each(links: Sequence[SessionLink], data: bytes, binary: bool) -> None:
    """The plain broadcast, for links that have nothing smarter."""
    for link in links:
        link.send_frame(data, binary)


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
    #: Error codes already logged for this session: log once, not per frame.
    logged: set[str] = attrs.field(factory=set)


@attrs.define
class Ticket:
    """A connection-to-be, with the subscriptions made ready for it."""

    session_id: str
    channels: set[str] = attrs.field(factory=set)


@attrs.frozen
class RouterLimits:
    #: Longest text frame, in bytes, accepted on a chat route.
    max_message_size: int = 64 * 1024
    #: Sustained frames per second per connection (0 disables the limit).
    rate: float = 20.0
    #: Frames a connection may send at once before the rate applies.
    burst: float = 40.0


def _group_channel(group: str) -> str:
    return "group:" + group


def _user_channel(user: str) -> str:
    return "user:" + user


def _group_scope(group: str) -> str:
    return "group:" + group


class Router:
    """
    Routes commands from local sessions to the backend, and envelopes
    from the backend to local sessions.

    ``clock`` is any monotonic ``() -> float``; tests pass a fake one.
    """

    def __init__(
        self,
        backend: IBackend,
        *,
        limits: RouterLimits = RouterLimits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self._clock = clock
        self._ids = itertools.count(1)
        self.sessions: dict[str, Session] = {}
        self._user_sessions: dict[str, set[Session]] = defaultdict(set)
        self._subscriptions = Subscriptions(backend)
        self._group_members: dict[str, set[Session]] = defaultdict(set)
        #: group -> user -> that user's (non-listener) sessions in the group:
        #: joins and leaves ask "is this user still here?" in O(1).
        self._group_users: dict[str, Counter[str]] = defaultdict(Counter)
        #: Local sessions speaking the native dialect. With none, an envelope
        #: for native sessions only (presence) has nobody to go to here.
        self._native_sessions = 0

    # -- connections -------------------------------------------------------

    def prepare(self, user: str | None = None) -> Deferred[Ticket]:
        """
        Subscribe what a new connection will need, before it is told it is
        connected: with a remote backend, a client that sends right after
        its handshake must already be reachable. ``user=None`` prepares an
        echo connection. Pass the ticket to :meth:`connect` (or
        :meth:`connect_echo`), or to :meth:`cancel` if the handshake fails.
        """
        ticket = self._new_ticket()
        session_id = ticket.session_id
        if user is None:
            waits = [self._hold(ticket, "echo:" + session_id, self._deliver_echo, session_id)]
        else:
            waits = [
                self._hold(ticket, _user_channel(user), self._deliver_to_user, user),
                self._hold(ticket, _group_channel(codec.LOBBY), self._deliver_to_group, codec.LOBBY),
            ]
        return gatherResults(waits).addCallback(lambda _: ticket)

    def cancel(self, ticket: Ticket) -> None:
        """Give back what :meth:`prepare` held for a connection that never opened."""
        for channel in ticket.channels:
            self._subscriptions.release(channel)
        ticket.channels.clear()

    def connect(
        self, link: SessionLink, user: str, *, native: bool, ticket: Ticket | None = None
    ) -> Session:
        """Register a chat connection; it joins the lobby, as in the seeds."""
        ticket = ticket or self._new_ticket()
        session = self._new_session(link, user, native, ticket)
        self._user_sessions[user].add(session)
        if _user_channel(user) not in session.channels:
            self._hold(session, _user_channel(user), self._deliver_to_user, user)
        if len(self._user_sessions[user]) == 1:
            _background(
                self._announce_added(
                    ONLINE_SCOPE, user, codec.presence("online", user), exclude=session.id
                )
            )
        if native:
            link.send_frame(codec.welcome(user, session.id, [codec.LOBBY]), False)
        _background(self._join(session, codec.LOBBY))
        return session

    def connect_echo(self, link: SessionLink, ticket: Ticket | None = None) -> Session:
        """
        Register an echo connection: whatever it sends travels through the
        backend and comes back to it alone (the conformance route).
        """
        ticket = ticket or self._new_ticket()
        session = self._new_session(link, "", False, ticket)
        session.echo = True
        channel = "echo:" + session.id
        if channel not in session.channels:
            self._hold(session, channel, self._deliver_echo, session.id)
        return session

    def connect_listener(self, link: SessionLink, group: str) -> Session:
        """
        Register an anonymous connection that only receives what is
        published to ``group`` (a live feed, like the voting example's
        viewers). It appears in no presence list.
        """
        session = self._new_session(link, "", False, self._new_ticket())
        session.listener = True
        session.groups.add(group)
        self._group_members[group].add(session)
        self._hold(session, _group_channel(group), self._deliver_to_group, group)
        return session

    def _new_ticket(self) -> Ticket:
        return Ticket(f"{self.backend.node_id}-{next(self._ids)}")

    def _new_session(self, link: SessionLink, user: str, native: bool, ticket: Ticket) -> Session:
        bucket = TokenBucket(self.limits.rate, self.limits.burst)
        session = Session(ticket.session_id, user, link, native, bucket)
        if native:
            self._native_sessions += 1
        session.channels.update(ticket.channels)
        ticket.channels.clear()
        self.sessions[session.id] = session
        return session

    def disconnect(self, session: Session) -> None:
        """Forget a closed connection and announce departures it causes."""
        if session.closed:
            return
        session.closed = True
        del self.sessions[session.id]
        if session.native:
            self._native_sessions -= 1
        if not (session.echo or session.listener):
            for group in sorted(session.groups):
                _background(self._leave(session, group))
            sessions = self._user_sessions[session.user]
            sessions.discard(session)
            if not sessions:
                del self._user_sessions[session.user]
                _background(
                    self._announce_removed(
                        ONLINE_SCOPE, session.user, codec.presence("offline", session.user)
                    )
                )
        for group in session.groups:
            self._group_members[group].discard(session)
            if not self._group_members[group]:
                del self._group_members[group]
                self._group_users.pop(group, None)
        for channel in session.channels:
            self._subscriptions.release(channel)
        session.channels.clear()

    def close_all(self, code: int = 1001, reason: str = "server is shutting down") -> None:
        for session in list(self.sessions.values()):
            session.link.close(code, reason)

    # -- inbound frames ----------------------------------------------------

    def receive_text(self, session: Session, text: str, size: int) -> None:
        """Handle one text frame of ``size`` bytes from a local session."""
        if session.echo:
            self._echo(session, text.encode("utf-8"), binary=False)
            return
        if size > self.limits.max_message_size:
            self._refuse(
                session,
                ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"Message of {size} bytes is over the limit of "
                    f"{self.limits.max_message_size} bytes; it was not delivered.",
                    codec.request_id_of(text),
                ),
            )
            return
        try:
            command = codec.decode(text)
        except ProtocolError as e:
            self._refuse(session, e)
            return
        if command.native and not session.native:
            # A client on a seed route that speaks the native dialect gets
            # native replies (acks, presence) from now on.
            session.native = True
            self._native_sessions += 1
        if not session.bucket.take(self._clock()):
            self._refuse(
                session,
                ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"Too many messages: at most {self.limits.rate:g} a second; "
                    "this one was not delivered.",
                    getattr(command, "id", None),
                ),
            )
            return
        handler = self._handlers[type(command)]
        handler(self, session, command)

    def receive_binary(self, session: Session, data: bytes) -> None:
        if session.echo:
            self._echo(session, data, binary=True)
            return
        self._refuse(
            session,
            ProtocolError(
                ErrorCode.BINARY_NOT_SUPPORTED,
                "Binary frames are not supported on chat connections; send JSON text.",
            ),
        )

    def _echo(self, session: Session, data: bytes, binary: bool) -> None:
        envelope = Envelope(self.backend.node_id, session.id, data, binary)
        d = self.backend.publish("echo:" + session.id, envelope)
        d.addErrback(self._failed, session, None)

    # -- commands ----------------------------------------------------------

    def _send_to_group(self, session: Session, command: codec.SendToGroup) -> None:
        if command.group not in session.groups:
            self._refuse(
                session,
                ProtocolError(
                    ErrorCode.NOT_A_MEMBER,
                    f"You are not a member of group '{command.group}'; join it first.",
                    command.id,
                ),
            )
            return
        envelope = Envelope(
            self.backend.node_id,
            session.id,
            codec.group_message(command.group, session.user, command.msg),
            exclude_session=session.id,
        )
        d = self.backend.publish(_group_channel(command.group), envelope)
        d.addCallbacks(lambda _: self._ack(session, command.id), self._failed,
                       errbackArgs=(session, command.id))

    def _send_to_user(self, session: Session, command: codec.SendToUser) -> None:
        data = codec.private_message(session.user, command.to, command.msg)
        envelope = Envelope(self.backend.node_id, session.id, data, exclude_session=session.id)
        d = self.backend.publish(_user_channel(command.to), envelope)

        def delivered(receivers: int) -> None:
            if receivers == 0:
                self._refuse(
                    session,
                    ProtocolError(
                        ErrorCode.UNKNOWN_USER,
                        f"User '{command.to}' is not online; the message was not delivered.",
                        command.id,
                    ),
                )
                return
            if command.to != session.user:
                # The sender's other devices see what was sent from this one.
                copy = Envelope(
                    envelope.origin_node, envelope.origin_session, envelope.data,
                    envelope.binary, Audience.NATIVE, envelope.exclude_session,
                )
                self.backend.publish(_user_channel(session.user), copy).addErrback(
                    self._failed, None, None
                )
            self._ack(session, command.id)

        d.addCallbacks(delivered, self._failed, errbackArgs=(session, command.id))

    def _join_command(self, session: Session, command: codec.Join) -> None:
        if command.group in session.groups:
            self._ack(session, command.id)
            return
        if len(session.groups) >= MAX_GROUPS_PER_SESSION:
            self._refuse(
                session,
                ProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    f"A connection may be in at most {MAX_GROUPS_PER_SESSION} groups.",
                    command.id,
                ),
            )
            return
        d = self._join(session, command.group)
        d.addCallbacks(lambda _: self._ack(session, command.id), self._failed,
                       errbackArgs=(session, command.id))

    def _leave_command(self, session: Session, command: codec.Leave) -> None:
        if command.group not in session.groups:
            self._refuse(
                session,
                ProtocolError(
                    ErrorCode.NOT_A_MEMBER,
                    f"You are not a member of group '{command.group}'.",
                    command.id,
                ),
            )
            return
        d = self._leave(session, command.group)
        d.addCallbacks(lambda _: self._ack(session, command.id), self._failed,
                       errbackArgs=(session, command.id))

    def _who_command(self, session: Session, command: codec.Who) -> None:
        d = self.backend.presence_members(_group_scope(command.group))
        d.addCallbacks(
            lambda users: self._send(session, codec.who(command.group, users, command.id)),
            self._failed,
            errbackArgs=(session, command.id),
        )

    _handlers: Mapping[type, Callable[[Router, Session, Any], None]] = {
        codec.SendToGroup: _send_to_group,
        codec.SendToUser: _send_to_user,
        codec.Join: _join_command,
        codec.Leave: _leave_command,
        codec.Who: _who_command,
    }

    # -- membership --------------------------------------------------------

    def _join(self, session: Session, group: str) -> Deferred[Any]:
        session.groups.add(group)
        members = self._group_members[group]
        users = self._group_users[group]
        user_already_here = users[session.user] > 0
        members.add(session)
        if not session.listener:
            users[session.user] += 1
        waits = []
        channel = _group_channel(group)
        if channel not in session.channels:
            waits.append(self._hold(session, channel, self._deliver_to_group, group))
        if not user_already_here:
            waits.append(
                self._announce_added(
                    _group_scope(group),
                    session.user,
                    codec.presence("join", session.user, group),
                    group,
                    exclude=session.id,
                )
            )
        return gatherResults(waits, consumeErrors=True).addErrback(_first_error)

    def _leave(self, session: Session, group: str) -> Deferred[Any]:
        session.groups.discard(group)
        members = self._group_members[group]
        users = self._group_users[group]
        if session in members and not session.listener:
            users[session.user] -= 1
            if users[session.user] <= 0:
                del users[session.user]
        members.discard(session)
        waits = []
        if not users.get(session.user):
            waits.append(
                self._announce_removed(
                    _group_scope(group),
                    session.user,
                    codec.presence("leave", session.user, group),
                    group,
                )
            )
        if not members:
            del self._group_members[group]
            self._group_users.pop(group, None)
        channel = _group_channel(group)
        if channel in session.channels:
            session.channels.discard(channel)
            self._subscriptions.release(channel)
        return gatherResults(waits, consumeErrors=True).addErrback(_first_error)

    def _announce_added(
        self,
        scope: str,
        user: str,
        event: bytes,
        group: str = codec.LOBBY,
        exclude: str | None = None,
    ) -> Deferred[None]:
        def announce(first_anywhere: bool) -> Deferred[Any] | None:
            if first_anywhere:
                return self._publish_presence(group, event, exclude)
            return None

        return self.backend.presence_add(scope, user).addCallback(announce)

    def _announce_removed(
        self, scope: str, user: str, event: bytes, group: str = codec.LOBBY
    ) -> Deferred[None]:
        def announce(gone_everywhere: bool) -> Deferred[Any] | None:
            if gone_everywhere:
                return self._publish_presence(group, event)
            return None

        return self.backend.presence_remove(scope, user).addCallback(announce)

    def _publish_presence(
        self, group: str, event: bytes, exclude: str | None = None
    ) -> Deferred[int]:
        envelope = Envelope(
            self.backend.node_id, "", event, audience=Audience.NATIVE, exclude_session=exclude
        )
        return self.backend.publish(_group_channel(group), envelope)

    def _hold(
        self, holder: Session | Ticket, channel: str, deliver: Callable[..., None], key: Any
    ) -> Deferred[None]:
        """Subscribe ``channel`` for ``holder``; it is released on disconnect."""
        holder.channels.add(channel)
        return self._subscriptions.hold(channel, functools.partial(deliver, key))

    # -- outbound ----------------------------------------------------------

    def _deliver_to_group(self, group: str, envelope: Envelope) -> None:
        self._deliver(self._group_members.get(group, ()), envelope)

    def _deliver_to_user(self, user: str, envelope: Envelope) -> None:
        self._deliver(self._user_sessions.get(user, ()), envelope)

    def _deliver_echo(self, session_id: str, envelope: Envelope) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.link.send_frame(envelope.data, envelope.binary)

    def _deliver(self, sessions: Iterable[Session], envelope: Envelope) -> None:
        native_only = envelope.audience is Audience.NATIVE
        if native_only and not self._native_sessions:
            return
        by_class: dict[type, list[SessionLink]] = {}
        for s in sessions:
            if s.id == envelope.exclude_session or (native_only and not s.native):
                continue
            by_class.setdefault(type(s.link), []).append(s.link)
        for link_class, links in by_class.items():
            broadcast = getattr(link_class, "broadcast", None)
            if broadcast is None:
                send_each(links, envelope.data, envelope.binary)
            else:
                broadcast(links, envelope.data, envelope.binary)

    def _send(self, session: Session, data: bytes) -> None:
        if not session.closed:
            session.link.send_frame(data, False)

    def _ack(self, session: Session, request_id: str | None) -> None:
        if request_id is not None and session.native:
            self._send(session, codec.ack(request_id))

    def _refuse(self, session: Session, error: ProtocolError) -> None:
        if error.code.value not in session.logged:
            session.logged.add(error.code.value)
            _log.info(
                "Refused a frame from {user!r} (session {session}): {code}: {reason} "
                "(further {code} errors of this session are not logged)",
                user=session.user,
                session=session.id,
                code=error.code.value,
                reason=error.reason,
            )
        self._send(session, codec.error(error, session.native))

    def _failed(self, failure: Failure, session: Session | None, request_id: str | None) -> None:
        """A backend call failed: tell the client instead of dropping its message."""
        if failure.check(BackendUnavailable):
            reason = "The message service is temporarily unavailable; the message was not delivered."
        else:
            _log.failure("Backend call failed", failure)
            reason = "Internal error in the message service; the message was not delivered."
        if session is not None:
            self._refuse(session, ProtocolError(ErrorCode.BACKEND_UNAVAILABLE, reason, request_id))

    # -- the embedding API -------------------------------------------------

    def publish(
        self,
        payload: Mapping[str, Any] | str | bytes,
        *,
        group: str | None = None,
        user: str | None = None,
        binary: bool = False,
    ) -> Deferred[int]:
        """
        Push a frame from server-side code to every member of ``group`` or
        every session of ``user``, on every node. A mapping is sent as
        JSON exactly as given. Fires with the number of nodes reached.
        """
        if (group is None) == (user is None):
            raise TypeError("publish() needs exactly one of group= or user=")
        if isinstance(payload, Mapping):
            data = codec.encode(dict(payload))
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = payload
        channel = _group_channel(group) if group is not None else _user_channel(user or "")
        return self.backend.publish(channel, Envelope(self.backend.node_id, "", data, binary))

    def join(self, session: Session, group: str) -> Deferred[Any]:
        """Make a session a member of ``group`` from server-side code."""
        if group in session.groups:
            return succeed(None)
        return self._join(session, group)


def _background(d: Deferred[Any]) -> None:
    """
    For work no client waits on (announcing presence on connect and
    disconnect): an outage is logged once by the backend itself, anything
    else is a bug worth a traceback.
    """

    def report(failure: Failure) -> None:
        failure = _first_error(failure)
        if not failure.check(BackendUnavailable):
            _log.failure("Background backend call failed", failure)

    d.addErrback(report)


def _first_error(failure: Failure) -> Failure:
    """Unwrap gatherResults' FirstError so callers see the real failure."""
    if isinstance(failure.value, FirstError):
        sub_failure: Failure = failure.value.subFailure
        return sub_failure
    return failure

