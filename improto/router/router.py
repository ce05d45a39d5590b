"""
The :class:`Router`: the one object a web layer or an embedding program holds.

It owns the lifecycle of connections (prepare, connect, disconnect), group
membership and the subscriptions behind it, and the embedding API
(:meth:`Router.publish`, :meth:`Router.join`). What a client's frames ask
for is decided in :mod:`improto.router.inbound`; how envelopes reach local
connections in :mod:`improto.router.delivery`.

Every delivery, even to a member on this very node, goes through the
backend, so one code path serves one node and many.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed

from improto.backends.interface import Envelope, IBackend, IImmediateBackend
from improto.protocol import codec
from improto.router.channels import echo_channel, group_channel, user_channel
from improto.router.delivery import Replies, deliver
from improto.router.durable import Durability, DurableMessages
from improto.router.groups import GroupMembership
from improto.router.inbound import Inbound
from improto.router.limits import RouterLimits
from improto.router.observer import NO_METRICS, Observer
from improto.router.presence import Presence, first_error, in_background
from improto.router.ratelimit import TokenBucket
from improto.router.sessions import Session, SessionLink, SessionTable, Ticket
from improto.router.settled import done, gather, settled, then
from improto.router.subscriptions import Subscriptions

__all__ = ["Durability", "Router", "RouterLimits", "Session", "SessionLink", "Ticket"]


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
        metrics: Observer = NO_METRICS,
        durability: Durability | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self._ids = itertools.count(1)
        self._table = SessionTable()
        self._groups = GroupMembership()
        self._subscriptions = Subscriptions(backend)
        self._now: IImmediateBackend | None = IImmediateBackend(backend, None)
        self.presence = Presence(backend, self._nobody_hears)
        self.replies = Replies(metrics)
        self.durable = DurableMessages(self, durability or Durability())
        self._inbound = Inbound(self)
        if hasattr(backend, "native_listeners"):
            # What a remote backend may drop undecoded (see its docstring).
            backend.native_listeners = self._has_native_sessions

    def _has_native_sessions(self) -> bool:
        return self._table.native_count > 0

    @property
    def sessions(self) -> Mapping[str, Session]:
        """Every open session on this node, by id (read-only)."""
        return self._table.by_id

    def sessions_of(self, user: str) -> Collection[Session]:
        """The open sessions of ``user`` on this node (read-only)."""
        return self._table.of_user(user)

    @property
    def channels_held(self) -> int:
        """Backend channels this node holds for its sessions (the metrics read it)."""
        return len(self._subscriptions)

    def counts(self) -> dict[str, int]:
        """
        What this node holds (read-only, for ``/healthz``): all zero once
        every client has left, so a soak test can see that nothing leaks.
        """
        return {
            "sessions": len(self._table.by_id),
            "users": len(self._table.by_user),
            "groups": len(self._groups),
            "channels": len(self._subscriptions),
        }

    # -- connections -------------------------------------------------------

    def prepare(self, user: str | None = None) -> Deferred[Ticket]:
        """
        Subscribe what a new connection will need, before it is told it is
        connected: with a remote backend, a client that sends right after
        its handshake must already be reachable. ``user=None`` prepares an
        echo connection. Pass the ticket to :meth:`connect` (or
        :meth:`connect_echo`), or to :meth:`cancel` if the handshake fails.
        """
        ticket = Ticket(self._new_id())
        if user is None:
            waits = [self._hold_echo(ticket, ticket.session_id)]
        else:
            waits = [self._hold_user(ticket, user), self._hold_group(ticket, codec.LOBBY)]
        if settled(waits):
            return succeed(ticket)
        return then(gather(waits), lambda _: ticket)

    def cancel(self, ticket: Ticket) -> None:
        """Give back what :meth:`prepare` held for a connection that never opened."""
        for channel in ticket.channels:
            self._subscriptions.release(channel)
        ticket.channels.clear()

    def connect(
        self, link: SessionLink, user: str, *, native: bool, ticket: Ticket | None = None,
        allowed_groups: frozenset[str] | None = None, resume: str | None = None,
    ) -> Session:
        """
        Register a chat connection; it joins the lobby, as in the seeds.
        ``allowed_groups`` (None = any) limits what its ``join`` frames may join.
        ``resume`` is the ``?resume=`` query value, if any (docs/protocol.md).
        """
        session = self._new_session(link, user, native, ticket)
        session.allowed_groups = allowed_groups
        self._table.add(session)
        if user_channel(user) not in session.channels:
            self._hold_user(session, user)
        if len(self._table.of_user(user)) == 1:
            in_background(self.presence.came_online(user, exclude=session.id))
        if native:
            link.send_frame(codec.welcome(user, session.id, [codec.LOBBY]), False)
        in_background(self.join_group(session, codec.LOBBY))
        self.durable.connected(session, resume)
        return session

    def connect_echo(self, link: SessionLink, ticket: Ticket | None = None) -> Session:
        """
        Register an echo connection: whatever it sends travels through the
        backend and comes back to it alone (the conformance route).
        """
        session = self._new_session(link, "", False, ticket)
        session.echo = True
        self._table.add(session)
        if echo_channel(session.id) not in session.channels:
            self._hold_echo(session, session.id)
        return session

    def connect_listener(self, link: SessionLink, group: str) -> Session:
        """
        Register an anonymous connection that only receives what is
        published to ``group`` (a live feed, like the voting example's
        viewers). It appears in no presence list.
        """
        session = self._new_session(link, "", False, None)
        session.listener = True
        self._table.add(session)
        self._groups.add(session, group)
        self._hold_group(session, group)
        return session

    def disconnect(self, session: Session) -> None:
        """Forget a closed connection and announce departures it causes."""
        if session.closed:
            return
        session.closed = True
        self.durable.disconnected(session)
        for group in sorted(session.groups):
            in_background(self.leave_group(session, group))
        if self._table.remove(session):
            in_background(self.presence.went_offline(session.user))
        for channel in session.channels:
            self._release(channel)
        session.channels.clear()

    def _release(self, channel: str) -> None:
        self._subscriptions.release(channel)
        if channel not in self._subscriptions:
            self.durable.tracker.forget(channel)

    def close_all(self, code: int = 1001, reason: str = "server is shutting down") -> None:
        for session in list(self._table.by_id.values()):
            session.link.close(code, reason)

    def _new_id(self) -> str:
        return f"{self.backend.node_id}-{next(self._ids)}"

    def _new_session(
        self, link: SessionLink, user: str, native: bool, ticket: Ticket | None
    ) -> Session:
        ticket = ticket or Ticket(self._new_id())
        self.metrics.session_opened()
        bucket = TokenBucket(self.limits.rate, self.limits.burst)
        session = Session(ticket.session_id, user, link, native, bucket)
        session.channels.update(ticket.channels)
        ticket.channels.clear()
        return session

    # -- inbound frames ----------------------------------------------------

    def receive_text(self, session: Session, text: str, size: int) -> None:
        """Handle one text frame of ``size`` bytes from a local session."""
        self._inbound.text(session, text, size)

    def receive_binary(self, session: Session, data: bytes) -> None:
        """Handle one binary frame from a local session."""
        self._inbound.binary(session, data)

    def became_native(self, session: Session) -> None:
        self._table.became_native(session)

    # -- membership --------------------------------------------------------

    def join_group(self, session: Session, group: str) -> Deferred[Any] | None:
        """
        Add ``session`` to ``group``: subscribe, and announce its user if new
        there. None when that is done already (see :class:`Presence`).
        """
        first_here = self._groups.add(session, group)
        waits: list[Deferred[Any] | None] = []
        if group_channel(group) not in session.channels:
            waits.append(self._hold_group(session, group))
        if first_here:
            waits.append(self.presence.joined(session.user, group, exclude=session.id))
        return _gathered(waits)

    def leave_group(self, session: Session, group: str) -> Deferred[Any] | None:
        """Take ``session`` out of ``group``, announcing its user's departure if last."""
        waits: list[Deferred[Any] | None] = []
        if self._groups.remove(session, group):
            waits.append(self.presence.left(session.user, group))
        channel = group_channel(group)
        if channel in session.channels:
            session.channels.discard(channel)
            self._release(channel)
        return _gathered(waits)

    # -- subscriptions and what arrives on them ------------------------------

    def _hold(
        self, holder: Session | Ticket, channel: str, deliver_to: Callable[[Envelope], None]
    ) -> Deferred[None] | None:
        """
        Subscribe ``channel`` for ``holder``; it is released on disconnect.
        None when the subscription is active already.
        """
        holder.channels.add(channel)
        return self._subscriptions.hold(channel, deliver_to)

    def _hold_user(self, holder: Session | Ticket, user: str) -> Deferred[None] | None:
        return self._hold(holder, user_channel(user), functools.partial(self._to_user, user))

    def _hold_group(self, holder: Session | Ticket, group: str) -> Deferred[None] | None:
        return self._hold(holder, group_channel(group), functools.partial(self._to_group, group))

    def _hold_echo(self, holder: Session | Ticket, session_id: str) -> Deferred[None] | None:
        return self._hold(holder, echo_channel(session_id), functools.partial(self._to_echo, session_id))

    def _nobody_hears(self, channel: str) -> bool:
        """
        Whether no node could deliver a native-only envelope (presence) on
        ``channel``: none but this one subscribes to it, and this one has no
        native session. Asked only on a backend that answers at once.
        """
        if self._table.native_count or self._now is None:
            return False
        return self._now.subscribers_now(channel) <= (channel in self._subscriptions)

    def _to_group(self, group: str, envelope: Envelope) -> None:
        if envelope.seq is None:
            self._fan_out_group(group, envelope)
            return
        self.durable.tracker.receive(envelope, functools.partial(self._fan_out_group, group))

    def _fan_out_group(self, group: str, envelope: Envelope) -> None:
        self.metrics.delivered("group", deliver(self._groups.members(group), envelope, self._table))

    def _to_user(self, user: str, envelope: Envelope) -> None:
        if envelope.seq is None:  # _fan_out_user, one call less per private message
            self.metrics.delivered("private", deliver(self._table.of_user(user), envelope, self._table))
            return
        self.durable.tracker.receive(envelope, functools.partial(self._fan_out_user, user))

    def _fan_out_user(self, user: str, envelope: Envelope) -> None:
        self.metrics.delivered("private", deliver(self._table.of_user(user), envelope, self._table))

    def _to_echo(self, session_id: str, envelope: Envelope) -> None:
        session = self._table.by_id.get(session_id)
        if session is not None:
            session.link.send_frame(envelope.data, envelope.binary)
            self.metrics.delivered("echo", 1)

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
        channel = group_channel(group) if group is not None else user_channel(user or "")
        return self.backend.publish(channel, Envelope(self.backend.node_id, "", data, binary))

    def join(self, session: Session, group: str) -> Deferred[Any]:
        """Make a session a member of ``group`` from server-side code."""
        if group in session.groups:
            return succeed(None)
        return self.join_group(session, group) or succeed(None)


def _gathered(waits: list[Deferred[Any] | None]) -> Deferred[Any] | None:
    """All of ``waits``, failing with the first one's own failure; None if all are done."""
    if settled(waits):
        return None
    gathered = gather(waits, consume_errors=True)
    return gathered if done(gathered) else gathered.addErrback(first_error)
