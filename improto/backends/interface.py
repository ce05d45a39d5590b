"""
The contract between the router and a delivery backend.

A backend moves already-encoded frames between improto nodes. It knows
channels, envelopes and presence sets; it knows nothing about WebSocket,
users' sessions or the chat protocol. Two implementations ship:
:class:`improto.backends.memory.MemoryBackend` (one process) and
:class:`improto.backends.redis.backend.RedisBackend` (many nodes sharing one Redis).

Everything that can wait on a network returns a ``Deferred`` so that the
router is written once for both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

_Result = TypeVar("_Result", contravariant=True)


class Audience(enum.Enum):
    """Which sessions on the receiving node get an envelope's frame."""

    ALL = "all"
    #: Only sessions speaking the native dialect. Presence events and the
    #: sender's own copies of private messages would render as garbage
    #: lines on the seed pages, which print every frame they receive.
    NATIVE = "native"


@attrs.frozen
class Envelope:
    """
    One frame on its way to every node subscribed to a channel.

    ``origin_node``/``origin_session`` say where it came from; a node
    delivers it to every local session of the channel except
    ``exclude_session``, which is how a sender never gets its own group
    message back, whichever node it is on.
    """

    origin_node: str
    origin_session: str
    data: bytes
    binary: bool = False
    audience: Audience = Audience.ALL
    exclude_session: str | None = None
    #: Set by :meth:`IBackend.append`: the history stream the frame is
    #: stored in and its position there (see :mod:`improto.backends.streams`).
    stream: str | None = None
    seq: int | None = None


def positioned(envelope: Envelope, stream: str, seq: int) -> Envelope:
    """``envelope`` at ``seq`` of ``stream`` (``attrs.evolve`` costs more, per message)."""
    e = envelope
    return Envelope(e.origin_node, e.origin_session, e.data, e.binary, e.audience, e.exclude_session,
                    stream, seq)


def for_natives(envelope: Envelope) -> Envelope:
    """``envelope`` for native sessions only: the copy a sender's other devices get."""
    e = envelope
    return Envelope(e.origin_node, e.origin_session, e.data, e.binary, Audience.NATIVE,
                    e.exclude_session)


class BackendState(enum.Enum):
    STARTING = "starting"
    OK = "ok"
    #: Lost its connection and is reconnecting; publishes fail fast.
    UNAVAILABLE = "unavailable"
    STOPPED = "stopped"


@attrs.frozen
class BackendHealth:
    state: BackendState
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state is BackendState.OK


class BackendUnavailable(Exception):
    """A publish or presence call could not reach the shared medium."""


EnvelopeCallback = Callable[[Envelope], None]


class Answer(Protocol[_Result]):
    """
    Where the outcome of a call goes, once: ``callback`` with its result
    or ``errback`` with a :class:`Failure`. A ``Deferred`` is one; so is a
    small object of the caller's, which costs a hot path less than a
    Deferred and the callbacks added to it (``send_private_to``).
    """

    def callback(self, result: _Result) -> object: ...

    def errback(self, fail: Failure) -> object: ...


@attrs.frozen
class Retention:
    """How much history a backend keeps per stream; ``size=0`` keeps none."""

    size: int = 200
    #: Seconds an entry stays readable.
    age: float = 86400.0

    @property
    def enabled(self) -> bool:
        return self.size > 0


@attrs.frozen
class Appended:
    """What :meth:`IBackend.append` did."""

    seq: int
    #: Nodes the envelope was published to (0: nobody subscribed).
    receivers: int
    #: The idempotency key was already used: nothing was stored or
    #: published again; ``seq``/``receivers`` are those of the original.
    duplicate: bool = False


@attrs.frozen
class HistoryPage:
    """One page of a stream, oldest first."""

    #: Stored envelopes, each with ``stream`` and ``seq`` set.
    messages: list[Envelope]
    #: The oldest seq still stored (``last_seq + 1`` when none is).
    first_seq: int
    #: The newest seq ever assigned in the stream (0: none yet).
    last_seq: int


class IBackend(Interface):
    """
    Pub/sub plus presence, shared by every node of one improto cluster.

    Channel names are plain strings chosen by the router (``group:lobby``,
    ``user:alice``, ``echo:<session>``); a backend may prefix them.
    A node holds at most one subscription per channel.

    What the contract leaves open, and callers must not rely on either way:
    whether a subscriber's callback runs before or after the Deferred of
    the ``publish`` that sent the envelope fires (the memory backend calls
    it inside ``publish``, Redis later). What it fixes for every backend:
    after :meth:`stop`, ``publish``, ``subscribe`` and ``presence_*``
    fail with :class:`BackendUnavailable`, and ``unsubscribe`` is a no-op.
    """

    node_id: str = Attribute("Unique id of this node, stamped on envelopes.")

    def start() -> Deferred[None]:
        """Connect; fires when publishing and subscribing work."""

    def stop() -> Deferred[None]:
        """
        Drop subscriptions and presence of this node, then disconnect.
        Idempotent; from then on the node refuses work (see above).
        """

    def health() -> BackendHealth:
        """The current state, cheap enough for every ``/healthz`` request."""

    def publish(channel: str, envelope: Envelope) -> Deferred[int]:
        """
        Send ``envelope`` to every node subscribed to ``channel``.

        Fires with the number of nodes that received it (0 means nobody
        is subscribed, which is how the router tells that a user is
        offline everywhere) or fails with :class:`BackendUnavailable`.
        The subscribers' callbacks may run before or after this Deferred
        fires; envelopes from one node reach each node in publish order.
        """

    def subscribe(channel: str, callback: EnvelopeCallback) -> Deferred[None]:
        """
        Call ``callback`` with every envelope later published on
        ``channel``, including this node's own. Fires once the
        subscription is active, so a publish issued after it is seen.

        While the shared medium is unreachable it fails with
        :class:`BackendUnavailable` but keeps the channel wanted: the
        subscription is made when the backend reconnects, and the caller
        still owes an ``unsubscribe`` when it no longer wants the channel.
        """

    def unsubscribe(channel: str) -> Deferred[None]:
        """Stop receiving ``channel``; unknown channels are ignored."""

    def presence_add(scope: str, member: str) -> Deferred[bool]:
        """
        Record that this node has ``member`` in ``scope`` (a group, or the
        whole-cluster ``online`` scope). Fires ``True`` when the member was
        not present on any node before: the router announces it then.
        """

    def presence_remove(scope: str, member: str) -> Deferred[bool]:
        """
        Forget this node's ``member`` in ``scope``. Fires ``True`` when no
        node has the member in ``scope`` any more.
        """

    def presence_members(scope: str) -> Deferred[list[str]]:
        """Every member of ``scope`` on every live node, sorted."""

    retention: Retention = Attribute("How much history append() keeps; settable before start().")

    def append(
        stream: str, channel: str, envelope: Envelope,
        idempotency_key: str | None = None, idempotency_ttl: float = 0,
    ) -> Deferred[Appended]:
        """
        Give ``envelope`` the next seq of ``stream``, store its ``data``
        in the stream's bounded history and publish it (with ``stream``
        and ``seq`` set) on ``channel``, atomically: every node delivers
        exactly the seq that is stored, and seqs reach each node in order.

        With ``idempotency_key``, a second append with the same key within
        ``idempotency_ttl`` seconds stores and publishes nothing and fires
        with the first one's result, ``duplicate=True``.
        """

    def history(
        stream: str, after_seq: int, limit: int, before_seq: int | None = None
    ) -> Deferred[HistoryPage]:
        """
        Up to ``limit`` stored messages with ``after_seq < seq``, oldest
        first; with ``before_seq``, the newest ``limit`` ones below it.
        """

    def mark_seen(user: str, cursor: int, ttl: float) -> Deferred[None]:
        """
        Remember for ``ttl`` seconds that ``user`` was connected, and that
        its private stream was delivered up to ``cursor`` (never lowered).
        """

    def last_seen(user: str) -> Deferred[int | None]:
        """The cursor of :meth:`mark_seen`, or None if not seen within its ttl."""


class IPrivateBackend(Interface):
    """
    Optional: a private message's whole send in one call, for a backend
    that can make it one round trip (the Redis backend: one script).
    Without it the router makes the same calls one by one
    (:func:`improto.backends.private.send_private_in_steps`, the
    reference for what this does).
    """

    def send_private(
        stream: str, envelope: Envelope, copy_stream: str | None, only_if_seen: str | None,
        idempotency_key: str | None = None, idempotency_ttl: float = 0, copy_only_elsewhere: bool = False,
    ) -> Deferred[Appended | int]:
        """
        With ``only_if_seen``, first :meth:`IBackend.last_seen` of that
        user. If it is None, the message is not stored: :meth:`IBackend.publish`
        ``envelope`` on the channel named ``stream`` and, if that reached a
        node and ``copy_stream`` is given, ``for_natives(envelope)`` on the
        channel named ``copy_stream``; fire with the first publish's node
        count. ``copy_only_elsewhere=True`` says that this node, although
        subscribed to ``copy_stream``, has nobody who wants that live copy:
        the backend may then skip it unless another node subscribes too.

        Otherwise :meth:`IBackend.append` ``envelope`` to ``stream``
        (published on the channel of the same name) and, with
        ``copy_stream`` and unless the append was a duplicate,
        ``for_natives(envelope)`` to ``copy_stream`` likewise, without an
        idempotency key; fire with the first append's :class:`Appended`.

        It fires once every step is done, and fails as those calls do if
        any failed.
        """

    def send_private_to(
        answer: Answer[Appended | int], stream: str, envelope: Envelope, copy_stream: str | None,
        only_if_seen: str | None, idempotency_key: str | None = None, idempotency_ttl: float = 0,
        copy_only_elsewhere: bool = False,
    ) -> None:
        """
        :meth:`send_private`, its outcome given to ``answer`` (perhaps
        before this returns) instead of a new Deferred: what the router
        calls once per private message.
        """


class IAnnouncingPresence(Interface):
    """
    Optional: a presence change and its announcement in one call, for a
    backend that can make them one round trip (the standalone Redis
    backend: the presence script publishes). Without it the router calls
    :meth:`IBackend.presence_add` (or ``presence_remove``), then
    :meth:`IBackend.publish` when that answered True.
    """

    def presence_add_announcing(scope: str, member: str, channel: str, envelope: Envelope) -> Deferred[bool]:
        """
        :meth:`IBackend.presence_add`; when it answers True, also
        :meth:`IBackend.publish` ``envelope`` on ``channel``, before the
        answer fires. Fails as either would.
        """

    def presence_remove_announcing(scope: str, member: str, channel: str, envelope: Envelope) -> Deferred[bool]:
        """:meth:`IBackend.presence_remove`, announcing likewise when it answers True."""


class IImmediateBackend(Interface):
    """
    Optional, for a backend whose calls never wait on a network (the memory
    backend): calls of :class:`IBackend` and :class:`IPrivateBackend`
    answered at once, for the router's per-message and per-connection
    paths, where a Deferred and its callbacks cost more than the in-memory
    work they carry (``benchmarks/micro.py --instructions --ops
    private,site-handshake``).

    Each has exactly the effects of its namesake without ``_now``, and
    returns what that one's Deferred would fire with, or raises what it
    would fail with (:class:`BackendUnavailable`). Subscribers' callbacks
    run inside the call, as the contract allows for ``publish``.
    """

    def publish_now(channel: str, envelope: Envelope) -> int:
        """:meth:`IBackend.publish`, answered at once."""

    def send_private_now(
        stream: str, envelope: Envelope, copy_stream: str | None, only_if_seen: str | None,
        idempotency_key: str | None = None, idempotency_ttl: float = 0, copy_only_elsewhere: bool = False,
    ) -> Appended | int:
        """:meth:`IPrivateBackend.send_private`, answered at once."""

    def subscribe_now(channel: str, callback: EnvelopeCallback) -> None:
        """:meth:`IBackend.subscribe`, answered at once (active on return)."""

    def unsubscribe_now(channel: str) -> None:
        """:meth:`IBackend.unsubscribe`, answered at once."""

    def presence_add_now(scope: str, member: str) -> bool:
        """:meth:`IBackend.presence_add`, answered at once."""

    def presence_remove_now(scope: str, member: str) -> bool:
        """:meth:`IBackend.presence_remove`, answered at once."""

    def subscribers_now(channel: str) -> int:
        """
        How many nodes subscribe to ``channel`` now: what ``publish_now``
        would return. Lets the router skip a publish nobody would receive
        (nothing is stored by a publish, so skipping it changes nothing).
        """
