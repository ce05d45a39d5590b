"""
The Redis backend: several improto nodes sharing one Redis act as one server.

Each node keeps two connections to a standalone Redis
(:class:`~improto.backends.redis.connection.RedisLink`): one for commands
(``PUBLISH``, presence scripts, heartbeats) and one in subscribe mode. A
node subscribes ``<prefix><channel>`` only for the channels the router
asks for, i.e. groups and users with sessions on this node; since each
node has exactly one subscriber connection, the count ``PUBLISH`` returns
is the number of nodes that received the envelope. Presence lives in
hashes guarded by per-node heartbeat keys, see
:mod:`improto.backends.redis.presence`. This module owns the life cycle
and the health state, and ties the links to subscriptions and presence.
Everything runs on the reactor thread, so it works under plain ``twistd``
with whatever reactor it installs.

Delivery guarantee
------------------
Redis pub/sub is at-most-once: Redis pushes a message to the subscriber
connections that exist when it executes the ``PUBLISH`` and forgets it;
nothing is stored or retried. improto adds:

* ``publish`` fires with the node count only after Redis accepted the
  ``PUBLISH``; if the connection is down, drops, or Redis does not answer
  within ``command_timeout``, it fails with ``BackendUnavailable`` and the
  router sends the client an error frame instead of an ack. A failure
  after the command was written is ambiguous: the message may or may not
  have been delivered.
* Envelopes one node publishes reach each subscribed node in publish
  order (one command connection and one subscriber connection per node).
  Delivery happens after ``publish`` was called, usually but not
  necessarily after its Deferred fired.
* After a reconnect the node resubscribes every channel still wanted and
  re-registers its presence before it reports OK again. Messages
  published while a node's subscriber connection was down are not
  replayed to that node: its sessions miss them.
* A node whose subscriber connection falls too far behind is
  disconnected by Redis (``client-output-buffer-limit pubsub``); it
  reconnects like after any other drop, and misses what was in flight.
* While either connection is down, ``health()`` is UNAVAILABLE and
  ``publish``/``presence_*`` fail at once with ``BackendUnavailable``;
  nothing waits for Redis to come back.
* Presence of a node that dies without ``stop()`` stays visible for at
  most ``heartbeat_ttl`` (15 s by default).

What pub/sub alone misses, history recovers: ``append`` stores every
chat message in its stream and publishes it in one script
(:mod:`improto.backends.redis.streams`), so a node that missed some
fetches them by seq (``history``), and so does a client that resumes.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from improto.backends.interface import (
    Answer,
    Appended,
    BackendHealth,
    BackendState,
    BackendUnavailable,
    Envelope,
    EnvelopeCallback,
    HistoryPage,
    IAnnouncingPresence,
    IBackend,
    IPrivateBackend,
    Retention,
)
from improto.backends.redis.client import RespConnection, RespStats, as_unavailable
from improto.backends.redis.connection import RedisLink
from improto.backends.redis.options import RedisAddress, RedisOptions, configure
from improto.backends.redis.presence import NodePresence, PresenceStore
from improto.backends.redis.streams import StreamStore
from improto.backends.redis.subscriptions import Subscriptions, native_listeners
from improto.backends.redis.wire import encode_envelope

_log = Logger()


@attrs.define
class RedisStats:
    """Counters for tests, benchmarks and ``/healthz`` detail."""

    commands: RespStats = attrs.field(factory=RespStats)
    subscriber: RespStats = attrs.field(factory=RespStats)
    published: int = 0
    received: int = 0
    decode_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)


@implementer(IBackend, IPrivateBackend, IAnnouncingPresence)
class RedisBackend:
    """See the module docstring; build one with :meth:`from_url`."""

    #: Called with each PUBLISH's Deferred (improto.metrics times it).
    publish_observer: Callable[[Deferred[int]], None] | None = None
    #: Set by the router: see :func:`~improto.backends.redis.subscriptions.native_listeners`.
    native_listeners = native_listeners("_subs")

    def __init__(self, address: RedisAddress, options: RedisOptions, reactor: Any) -> None:
        self.address = address
        self.options = options
        self.reactor = reactor
        self.node_id = options.node_id or uuid.uuid4().hex[:12]
        self.stats = RedisStats()
        prefix = options.prefix.encode("utf-8")
        self._state = BackendState.STARTING
        self._detail = f"not started; Redis at {address.display}"
        self._down_since: float | None = None
        self._stopping: Deferred[None] | None = None
        self._subs = Subscriptions(prefix, self.node_id, self.stats)
        self._presence = NodePresence(PresenceStore(prefix, self.node_id, int(options.heartbeat_ttl * 1000)))
        self._channel_prefix = prefix
        self._streams = StreamStore(prefix)
        self.retention = Retention()
        self.command_link = self._link(
            "command", self._setup_commands, self.stats.commands, lambda conn: self._link_ready()
        )
        self.subscriber_link = self._link(
            "subscriber", self._setup_subscriber, self.stats.subscriber, self._subscriber_ready, self._subs.on_message
        )
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor

    def _link(
        self,
        role: str,
        setup: Callable[[RespConnection], Coroutine[Any, Any, None]],
        stats: RespStats,
        on_ready: Callable[[RespConnection], None],
        on_message: Callable[[bytes, bytes], None] | None = None,
    ) -> RedisLink:
        return RedisLink(
            role,
            f"improto:{self.node_id}:{'sub' if on_message else 'cmd'}",
            self.reactor,
            self.address,
            self.options,
            setup=setup,
            stats=stats,
            on_ready=on_ready,
            on_lost=lambda cause: self._link_lost(role, cause),
            on_retry_failed=self._retry_failed,
            on_message=on_message,
            select_db=on_message is None,
            endpoint=self._endpoint(),
        )

    def _endpoint(self) -> Any:
        """Where the links connect; ``None`` is ``address``. The Sentinel backend asks Sentinel."""
        return None

    @classmethod
    def from_url(cls, url: str, reactor: Any = None, prefix: str | None = None, **options: Any) -> RedisBackend:
        """
        Build a backend for ``redis://[[user]:password@]host[:port][/db]``.

        Options (keyword arguments, or URL query parameters such as
        ``?heartbeat_interval=2&heartbeat_ttl=6``; keywords win): those of
        :class:`~improto.backends.redis.options.RedisOptions`. Raises
        ``ValueError`` with a one-line message for a malformed URL or
        option; nothing connects before :meth:`start`.
        """
        if prefix is not None:
            options["prefix"] = prefix
        address, opts = configure(url, **options)
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        return cls(address, opts, reactor)

    # -- life cycle -------------------------------------------------------

    def start(self) -> Deferred[None]:
        if self._state is not BackendState.STARTING:
            return fail(BackendUnavailable(f"cannot start a backend that is {self._state.value}"))
        self._detail = f"connecting to Redis at {self.address.display}"
        links = (self.command_link, self.subscriber_link)
        d = gatherResults([link.start() for link in links], consumeErrors=True)

        def started(_: object) -> None:
            if self._state is not BackendState.STARTING:
                raise BackendUnavailable(f"backend was {self._state.value} while starting")
            if not all(link.ready for link in links):
                raise BackendUnavailable(f"lost connection to Redis at {self.address.display} while starting")
            self._set_ok()
            self._heartbeat.start(self.options.heartbeat_interval, now=False)
            _log.info(
                "Redis backend: node {node_id} connected to {address} db {db}",
                node_id=self.node_id,
                address=self.address.display,
                db=self.address.db,
            )

        def failed(failure: Failure) -> Deferred[None]:
            while isinstance(failure.value, FirstError):
                failure = failure.value.subFailure
            error = failure.value
            if self._state is BackendState.STARTING:
                self._detail = str(error)
            closed = gatherResults([link.close() for link in links])
            return closed.addCallback(lambda _: Failure(error))  # type: ignore[return-value]

        return d.addCallback(started).addErrback(failed)

    def stop(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        done: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            done.callback(None)
            return result

        self._stopping.addBoth(relay)
        return done

    async def _stop(self) -> None:
        self._state = BackendState.STOPPED
        self._detail = "stopped"
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._subs.clear()
        goodbye = self._presence.goodbye(self.command_link.ready)
        if goodbye is not None:
            try:
                await goodbye
            except Exception as e:
                _log.warn(
                    "Redis backend: could not remove presence of node {node_id} on stop "
                    "({error}); it expires with the heartbeat",
                    node_id=self.node_id,
                    error=getattr(e, "subFailure", e),
                )
        await gatherResults([self.command_link.close(), self.subscriber_link.close()])

    def health(self) -> BackendHealth:
        return BackendHealth(self._state, self._detail)

    @property
    def channels_subscribed(self) -> int:
        """Pub/sub channels subscribed on the current connection (a metric)."""
        return self._subs.active

    # -- state ------------------------------------------------------------

    def _set_ok(self) -> None:
        self._state = BackendState.OK
        self._detail = f"Redis at {self.address.display} db {self.address.db}, node {self.node_id}"

    def _subscriber_ready(self, conn: RespConnection) -> None:
        self._subs.sync(conn)
        self._link_ready()

    def _link_ready(self) -> None:
        if self._state is BackendState.UNAVAILABLE and self.command_link.ready and self.subscriber_link.ready:
            down = self.reactor.seconds() - (self._down_since or self.reactor.seconds())
            self._set_ok()
            _log.info(
                "Redis backend: connection to {address} restored after {downtime:.1f}s; "
                "{channels} channel(s) resubscribed, {entries} presence entr(y/ies) re-registered",
                node_id=self.node_id,
                address=self.address.display,
                downtime=down,
                channels=self._subs.active,
                entries=len(self._presence.entries),
            )

    def _link_lost(self, role: str, cause: str) -> None:
        reason = f"lost {role} connection to Redis at {self.address.display}: {cause}"
        if self._state is BackendState.OK:
            self._state = BackendState.UNAVAILABLE
            self._down_since = self.reactor.seconds()
            _log.warn(
                "Redis backend: {reason}; publish and presence fail until it is back, reconnecting",
                node_id=self.node_id,
                reason=reason,
            )
        if self._state is BackendState.UNAVAILABLE:
            self._detail = f"{reason}; reconnecting"

    def _retry_failed(self, reason: str) -> None:
        if self._state is BackendState.UNAVAILABLE:
            self._detail = f"{reason}; retrying"

    def _command_connection(self, what: str) -> RespConnection:
        conn = self.command_link.ready
        if self._state is not BackendState.OK or conn is None:
            raise BackendUnavailable(f"cannot {what}: {self._detail}")
        return conn

    # -- connection set-up (after the link's AUTH, SELECT and name) -------

    async def _setup_commands(self, conn: RespConnection) -> None:
        store = self._presence.store
        await store.load_scripts(conn)
        await self._streams.load_scripts(conn)
        await store.heartbeat(conn)
        await self._presence.reregister(conn)

    async def _setup_subscriber(self, conn: RespConnection) -> None:
        await self._subs.resubscribe(conn)

    # -- pub/sub ----------------------------------------------------------

    def publish(self, channel: str, envelope: Envelope) -> Deferred[int]:
        try:
            conn = self._command_connection("publish")
            payload = encode_envelope(envelope)
        except Exception:
            return fail()
        self.stats.published += 1
        d = conn.execute(b"PUBLISH", self._channel_prefix + channel.encode("utf-8"), payload)
        if self.publish_observer is not None:
            self.publish_observer(d)
        return d.addErrback(as_unavailable, "PUBLISH")

    def subscribe(self, channel: str, callback: EnvelopeCallback) -> Deferred[None]:
        """
        While Redis is unreachable the channel is still recorded, so it is
        subscribed on reconnect, but the call fails at once with
        ``BackendUnavailable`` rather than waiting for Redis.
        """
        if self._state is BackendState.STOPPED:
            return fail(BackendUnavailable("cannot subscribe: backend stopped"))
        return self._subs.subscribe(self.subscriber_link.ready, channel, callback, self._detail)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        return self._subs.unsubscribe(self.subscriber_link.ready, channel)

    # -- history (improto.backends.redis.streams) ---------------------------

    def _on_commands(self, what: str, call: Callable[[RespConnection], Deferred[Any]]) -> Deferred[Any]:
        try:
            conn = self._command_connection(what)
        except BackendUnavailable:
            return fail()
        return call(conn).addErrback(as_unavailable, what)

    def append(
        self, stream: str, channel: str, envelope: Envelope,
        idempotency_key: str | None = None, idempotency_ttl: float = 0,
    ) -> Deferred[Appended]:
        self.stats.published += 1
        channel_key = self._channel_prefix + channel.encode("utf-8")
        return self._on_commands("append", lambda conn: self._streams.append(
            conn, channel_key, stream, envelope, self.retention, idempotency_key, idempotency_ttl))

    def send_private(
        self, stream: str, envelope: Envelope, copy_stream: str | None, only_if_seen: str | None,
        idempotency_key: str | None = None, idempotency_ttl: float = 0, copy_only_elsewhere: bool = False,
    ) -> Deferred[Appended | int]:
        d: Deferred[Appended | int] = Deferred()
        self.send_private_to(d, stream, envelope, copy_stream, only_if_seen, idempotency_key,
                             idempotency_ttl, copy_only_elsewhere)
        return d

    def send_private_to(
        self, answer: Answer[Appended | int], stream: str, envelope: Envelope, copy_stream: str | None,
        only_if_seen: str | None, idempotency_key: str | None = None, idempotency_ttl: float = 0,
        copy_only_elsewhere: bool = False,
    ) -> None:
        try:
            conn = self._command_connection("append")
        except BackendUnavailable:
            answer.errback(Failure())
            return
        self.stats.published += 1 if copy_stream is None else 2
        # Batched per reactor turn, errors already as BackendUnavailable.
        self._streams.send_private(
            conn, answer, self._channel_prefix, stream, envelope, copy_stream, only_if_seen, self.retention,
            idempotency_key, idempotency_ttl, copy_only_elsewhere)

    def history(
        self, stream: str, after_seq: int, limit: int, before_seq: int | None = None
    ) -> Deferred[HistoryPage]:
        return self._on_commands("read history", lambda conn: self._streams.history(
            conn, stream, after_seq, limit, before_seq, self.retention))

    def mark_seen(self, user: str, cursor: int, ttl: float) -> Deferred[None]:
        return self._on_commands("mark seen", lambda conn: self._streams.mark_seen(conn, user, cursor, ttl))

    def last_seen(self, user: str) -> Deferred[int | None]:
        return self._on_commands("read last seen", lambda conn: self._streams.last_seen(conn, user))

    # -- presence ---------------------------------------------------------

    def presence_add(self, scope: str, member: str) -> Deferred[bool]:
        return self._presence_change(True, scope, member, None)

    def presence_remove(self, scope: str, member: str) -> Deferred[bool]:
        return self._presence_change(False, scope, member, None)

    def presence_add_announcing(self, scope: str, member: str, channel: str, envelope: Envelope) -> Deferred[bool]:
        return self._presence_change(True, scope, member, (channel, envelope))

    def presence_remove_announcing(self, scope: str, member: str, channel: str, envelope: Envelope) -> Deferred[bool]:
        return self._presence_change(False, scope, member, (channel, envelope))

    def _presence_change(
        self, add: bool, scope: str, member: str, announce: tuple[str, Envelope] | None
    ) -> Deferred[bool]:
        """One presence script; with ``announce``, it also publishes on a change."""
        try:
            conn = self._command_connection("add presence" if add else "remove presence")
            published = None if announce is None else (
                self._channel_prefix + announce[0].encode("utf-8"), encode_envelope(announce[1]))
        except BackendUnavailable:
            if not add and self._state is not BackendState.STOPPED:
                self._presence.forget(scope, member)
            return fail()
        change = self._presence.add if add else self._presence.remove
        d = change(conn, scope, member, published)
        return d if published is None else d.addCallback(self._announced)

    def _announced(self, changed: bool) -> bool:
        if changed:
            self.stats.published += 1
        return changed

    def presence_members(self, scope: str) -> Deferred[list[str]]:
        try:
            conn = self._command_connection("list presence")
        except BackendUnavailable:
            return fail()
        d = self._presence.store.members(conn, scope)
        return d.addErrback(as_unavailable, "presence_members")

    # -- heartbeat --------------------------------------------------------

    def _beat(self) -> None:
        conn = self.command_link.ready
        if conn is not None:
            self._presence.beat(conn)
        sub = self.subscriber_link.ready
        if sub is not None:
            # A PING the command timeout can fire on: the only way to notice
            # a subscriber connection that died without a FIN.
            sub.execute(b"PING").addErrback(lambda _: None)
