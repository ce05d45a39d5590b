"""
The Redis backend: several improto nodes sharing one Redis act as one server.

Each node keeps two connections to a standalone Redis: one for commands
(``PUBLISH``, presence scripts, heartbeats) and one in subscribe mode. A
node subscribes ``<prefix><channel>`` only for the channels the router
asks for, i.e. groups and users with sessions on this node; since each
node has exactly one subscriber connection, the count ``PUBLISH`` returns
is the number of nodes that received the envelope. Presence lives in
hashes guarded by per-node heartbeat keys, see :mod:`improto.backends.redis.presence`.
Everything runs on the reactor thread over :mod:`improto.backends.redis.client`, so
it works under plain ``twistd`` with whatever reactor it installs.

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
"""

from __future__ import annotations

import collections
import functools
import random
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from improto.backends.interface import (
    Appended,
    BackendHealth,
    BackendState,
    BackendUnavailable,
    Envelope,
    EnvelopeCallback,
    HistoryPage,
    IBackend,
    Retention,
)
from improto.backends.redis.client import RedisReplyError, RespConnection, RespStats
from improto.backends.redis.presence import PresenceStore
from improto.backends.redis.streams import StreamStore
from improto.backends.redis.wire import WireError, decode_envelope, encode_envelope

_log = Logger()

_NODE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@attrs.frozen
class RedisAddress:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def display(self) -> str:
        """Where we connect, without credentials: safe for logs and health."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class RedisOptions:
    """Tunables; each may also be given as a query parameter of the URL."""

    prefix: str = "improto:"
    node_id: str | None = None
    heartbeat_interval: float = 5.0
    heartbeat_ttl: float = 15.0
    reconnect_initial_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    command_timeout: float = 5.0
    connect_timeout: float = 5.0
    #: Coalesce the commands of one reactor turn into one write. Off only
    #: to measure what it buys (``benchmarks/bench_redis_batching.py``).
    batch_writes: bool = True

    def __attrs_post_init__(self) -> None:
        if self.node_id is not None and not _NODE_ID.fullmatch(self.node_id):
            raise ValueError(f"node id {self.node_id!r} must be 1-64 of [A-Za-z0-9._:-]")
        for name in (
            "heartbeat_interval",
            "heartbeat_ttl",
            "reconnect_initial_delay",
            "reconnect_max_delay",
            "command_timeout",
            "connect_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ValueError("heartbeat_ttl must exceed heartbeat_interval")


_FLOAT_OPTIONS = {
    a.name for a in attrs.fields(RedisOptions) if a.type in ("float", float)
}


def parse_redis_url(url: str) -> tuple[RedisAddress, dict[str, Any]]:
    """
    Split ``redis://[[user]:password@]host[:port][/db][?option=value...]``.

    Raises ``ValueError`` with a one-line message naming what is wrong and
    never echoing the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"bad Redis URL: {e}") from None
    shown = _redact(url, parts.password)
    if parts.scheme != "redis":
        raise ValueError(f"bad Redis URL {shown!r}: scheme must be redis://")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad Redis URL {shown!r}: port must be an integer in 1-65535")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"bad Redis URL {shown!r}: database must be a non-negative integer")
    address = RedisAddress(
        host=unquote(parts.hostname or "localhost"),
        port=port or 6379,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
    options: dict[str, Any] = {}
    known = {a.name for a in attrs.fields(RedisOptions)}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise ValueError(f"bad Redis URL {shown!r}: unknown option {name!r}")
        if name in _FLOAT_OPTIONS:
            try:
                options[name] = float(value)
            except ValueError:
                raise ValueError(f"bad Redis URL {shown!r}: {name} must be a number") from None
        elif name == "batch_writes":
            options[name] = value.lower() not in ("0", "false", "no", "off")
        else:
            options[name] = value
    return address, options


def _redact(url: str, password: str | None) -> str:
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)


def _reason(failure: Failure) -> str:
    """The cause of a failed connect attempt, as users know it."""
    value = failure.value
    if isinstance(value, DNSLookupError):
        text = f"cannot resolve host ({value.args[0] if value.args else 'no results'})"
    elif isinstance(value, ConnectError) and value.args and isinstance(value.args[0], str) and value.args[0]:
        text = value.args[0]
    else:
        text = failure.getErrorMessage() or type(value).__name__
    return " ".join(str(text).split()).rstrip(".")


def _as_unavailable(failure: Failure, what: str) -> Failure:
    if failure.check(BackendUnavailable):
        return failure
    if failure.check(RedisReplyError):
        return Failure(BackendUnavailable(f"Redis refused {what}: {failure.value}"))
    return failure


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """
    Connect, authenticate, select the db and PING, with blocking redis-py.

    For command-line validation before the reactor runs (``twistd
    improto`` options), so a wrong address is a one-line usage error
    rather than a traceback; never call it on the reactor thread. Raises
    ``ValueError`` for a malformed URL and :class:`BackendUnavailable` for
    everything else, each in one line without the password.
    """
    address, _ = parse_redis_url(url)
    where = address.display
    client = redis.Redis(
        host=address.host,
        port=address.port,
        db=address.db,
        username=address.username,
        password=address.password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # redis-py retries with backoff by default: seconds of silence
        # before telling a user their address is wrong.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise BackendUnavailable(f"Redis at {where} refused AUTH: {e}") from None
    except (redis.ConnectionError, redis.TimeoutError) as e:
        cause = e.__context__
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
        elif isinstance(e, redis.TimeoutError) or isinstance(cause, TimeoutError):
            reason = f"no answer within {timeout:g}s"
        else:
            reason = str(e)
        raise BackendUnavailable(f"cannot reach Redis at {where}: {_one_line_text(reason)}") from None
    except redis.ResponseError as e:
        raise BackendUnavailable(f"Redis at {where} refused db {address.db}: {e}") from None
    except redis.RedisError as e:
        raise BackendUnavailable(f"Redis at {where}: {_one_line_text(str(e))}") from None
    finally:
        client.close()


def _one_line_text(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


@attrs.define
class RedisStats:
    """Counters for tests, benchmarks and ``/healthz`` detail."""

    commands: RespStats = attrs.field(factory=RespStats)
    subscriber: RespStats = attrs.field(factory=RespStats)
    published: int = 0
    received: int = 0
    reconnect_attempts: int = 0
    decode_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)


class _Link:
    """
    One logical connection to Redis that outlives its TCP connections.

    An attempt is "connect, then ``prepare``" (AUTH, SELECT, resubscribe,
    re-register presence...). Only a prepared connection is ``ready``;
    once reconnecting is enabled, a lost connection is replaced with
    exponential backoff capped at ``reconnect_max_delay``.
    """

    def __init__(
        self,
        backend: RedisBackend,
        name: str,
        prepare: Callable[[RespConnection], Coroutine[Any, Any, None]],
        stats: RespStats,
        on_message: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self._prepare = prepare
        opts = backend.options
        self._factory = Factory.forProtocol(
            functools.partial(  # type: ignore[arg-type]
                RespConnection,
                backend.reactor,
                timeout=opts.command_timeout,
                stats=stats,
                batch_writes=opts.batch_writes,
                on_message=on_message,
            )
        )
        # One "Starting factory" line per reconnect attempt is noise.
        self._factory.noisy = False
        self._endpoint = HostnameEndpoint(
            backend.reactor,
            backend.address.host,
            backend.address.port,
            timeout=opts.connect_timeout,
        )
        self.ready: RespConnection | None = None
        self._conn: RespConnection | None = None
        self._attempt: Deferred[Any] | None = None
        self._retry_call: IDelayedCall | None = None
        self._failures = 0
        self.reconnecting = False
        self.closing = False

    def connect(self) -> Deferred[RespConnection]:
        """One attempt; fails with a one-line ``BackendUnavailable``."""
        self.closing = False
        where = self.backend.address.display
        attempt = self._endpoint.connect(self._factory)
        self._attempt = attempt

        def unreachable(failure: Failure) -> Failure:
            return Failure(BackendUnavailable(f"cannot reach Redis at {where}: {_reason(failure)}"))

        def connected(conn: RespConnection) -> Deferred[RespConnection]:
            self._conn = conn
            conn.lost.addCallback(self._lost, conn)
            prepared = maybeDeferred(lambda: Deferred.fromCoroutine(self._prepare(conn)))
            return prepared.addCallbacks(lambda _: self._prepared(conn), lambda f: self._unprepared(conn, f))

        return attempt.addCallbacks(connected, unreachable)

    def _prepared(self, conn: RespConnection) -> RespConnection:
        if self.closing:
            raise BackendUnavailable(f"{self.name} connection closed while being set up")
        if not conn.is_open:
            raise BackendUnavailable(f"lost {self.name} connection to Redis at {self.backend.address.display}")
        self.ready = conn
        self._failures = 0
        self.backend._link_ready(self)
        return conn

    def _unprepared(self, conn: RespConnection, failure: Failure) -> Failure:
        if conn.is_open:
            conn.abort("set-up failed")
        while isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        if failure.check(BackendUnavailable):
            return failure
        where = self.backend.address.display
        return Failure(BackendUnavailable(f"Redis at {where} failed set-up: {failure.getErrorMessage()}"))

    def _lost(self, reason: str, conn: RespConnection) -> str:
        if self._conn is conn:
            self._conn = None
        if self.ready is conn:
            self.ready = None
            self.backend._link_lost(self, reason)
            self._schedule_retry()
        return reason

    def _schedule_retry(self) -> None:
        if self.closing or not self.reconnecting or self._retry_call is not None:
            return
        opts = self.backend.options
        delay = min(opts.reconnect_max_delay, opts.reconnect_initial_delay * 2**self._failures)
        # Jitter keeps a fleet of nodes from reconnecting in lockstep.
        delay *= random.uniform(0.75, 1.0)
        self._retry_call = self.backend.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self.backend.stats.reconnect_attempts += 1
        self.connect().addErrback(self._retry_failed)

    def _retry_failed(self, failure: Failure) -> None:
        if self.closing:
            return
        self._failures += 1
        self.backend._link_retry_failed(self, failure.getErrorMessage())
        self._schedule_retry()

    def close(self) -> Deferred[Any]:
        """Stop reconnecting and close; fires once the connection is gone."""
        self.closing = True
        self.reconnecting = False
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        if self._attempt is not None and not self._attempt.called:
            self._attempt.cancel()
        self.ready = None
        conn, self._conn = self._conn, None
        if conn is not None:
            return conn.close()
        return succeed(None)


@implementer(IBackend)
class RedisBackend:
    """See the module docstring; build one with :meth:`from_url`."""

    def __init__(self, address: RedisAddress, options: RedisOptions, reactor: Any) -> None:
        self.address = address
        self.options = options
        self.reactor = reactor
        self.node_id = options.node_id or uuid.uuid4().hex[:12]
        self.stats = RedisStats()
        self._prefix = options.prefix.encode("utf-8")
        self._presence_store = PresenceStore(
            self._prefix, self.node_id, int(options.heartbeat_ttl * 1000)
        )
        self._streams = StreamStore(self._prefix)
        self.retention = Retention()
        self._state = BackendState.STARTING
        self._detail = f"not started; Redis at {address.display}"
        self._down_since: float | None = None
        self._stopping: Deferred[None] | None = None
        self._wanted: dict[str, EnvelopeCallback] = {}
        # Subscriptions on the current subscriber connection: SUBSCRIBE
        # sent, SUBSCRIBE confirmed, and callers waiting for the latest
        # SUBSCRIBE of a channel to be confirmed.
        self._sub_sent: set[str] = set()
        self._sub_active: set[str] = set()
        self._sub_waiters: dict[str, list[Deferred[None]]] = {}
        # Presence this node holds, and entries whose removal could not be
        # confirmed: both are replayed on reconnect so Redis converges.
        self._presence: set[tuple[str, str]] = set()
        self._tombstones: set[tuple[str, str]] = set()
        self._cmd = _Link(self, "command", self._prepare_commands, self.stats.commands)
        self._sub = _Link(
            self, "subscriber", self._prepare_subscriber, self.stats.subscriber, self._on_message
        )
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor

    @classmethod
    def from_url(
        cls,
        url: str,
        reactor: Any = None,
        prefix: str | None = None,
        **options: Any,
    ) -> RedisBackend:
        """
        Build a backend for ``redis://[[user]:password@]host[:port][/db]``.

        Options (keyword arguments, or URL query parameters such as
        ``?heartbeat_interval=2&heartbeat_ttl=6``; keywords win): those of
        :class:`RedisOptions`. Raises ``ValueError`` with a one-line
        message for a malformed URL or option; nothing connects before
        :meth:`start`.
        """
        address, from_query = parse_redis_url(url)
        merged = {**from_query, **{k: v for k, v in options.items() if v is not None}}
        if prefix is not None:
            merged["prefix"] = prefix
        try:
            opts = RedisOptions(**merged)
        except TypeError as e:
            raise ValueError(f"bad Redis backend option: {e}") from None
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        return cls(address, opts, reactor)

    # -- life cycle -------------------------------------------------------

    def start(self) -> Deferred[None]:
        if self._state is not BackendState.STARTING:
            return fail(BackendUnavailable(f"cannot start a backend that is {self._state.value}"))
        self._detail = f"connecting to Redis at {self.address.display}"
        d = gatherResults([self._cmd.connect(), self._sub.connect()], consumeErrors=True)

        def started(_: object) -> None:
            if self._state is not BackendState.STARTING:
                raise BackendUnavailable(f"backend was {self._state.value} while starting")
            if not (self._cmd.ready and self._sub.ready):
                raise BackendUnavailable(f"lost connection to Redis at {self.address.display} while starting")
            self._cmd.reconnecting = self._sub.reconnecting = True
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
            closed = gatherResults([self._cmd.close(), self._sub.close()])
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
        self._wanted.clear()
        entries = self._presence | self._tombstones
        self._presence.clear()
        self._tombstones.clear()
        conn = self._cmd.ready
        if conn is not None:
            store = self._presence_store
            goodbye = [store.remove(conn, scope, member) for scope, member in entries]
            goodbye.append(store.goodbye(conn))
            try:
                await gatherResults(goodbye, consumeErrors=True)
            except Exception as e:
                _log.warn(
                    "Redis backend: could not remove presence of node {node_id} on stop "
                    "({error}); it expires with the heartbeat",
                    node_id=self.node_id,
                    error=getattr(e, "subFailure", e),
                )
        await gatherResults([self._cmd.close(), self._sub.close()])

    def health(self) -> BackendHealth:
        return BackendHealth(self._state, self._detail)

    # -- state ------------------------------------------------------------

    def _set_ok(self) -> None:
        self._state = BackendState.OK
        self._detail = f"Redis at {self.address.display} db {self.address.db}, node {self.node_id}"

    def _link_ready(self, link: _Link) -> None:
        if link is self._sub:
            self._sync_subscriptions(link.ready)  # type: ignore[arg-type]
        if self._state is BackendState.UNAVAILABLE and self._cmd.ready and self._sub.ready:
            down = self.reactor.seconds() - (self._down_since or self.reactor.seconds())
            self._set_ok()
            _log.info(
                "Redis backend: connection to {address} restored after {downtime:.1f}s; "
                "{channels} channel(s) resubscribed, {entries} presence entr(y/ies) re-registered",
                node_id=self.node_id,
                address=self.address.display,
                downtime=down,
                channels=len(self._sub_sent),
                entries=len(self._presence),
            )

    def _link_lost(self, link: _Link, cause: str) -> None:
        reason = f"lost {link.name} connection to Redis at {self.address.display}: {cause}"
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

    def _link_retry_failed(self, link: _Link, reason: str) -> None:
        if self._state is BackendState.UNAVAILABLE:
            self._detail = f"{reason}; retrying"

    def _command_connection(self, what: str) -> RespConnection:
        conn = self._cmd.ready
        if self._state is not BackendState.OK or conn is None:
            raise BackendUnavailable(f"cannot {what}: {self._detail}")
        return conn

    # -- connection set-up ------------------------------------------------

    async def _authenticate(self, conn: RespConnection) -> None:
        address = self.address
        if address.password is None:
            return
        args = [address.username, address.password] if address.username else [address.password]
        try:
            await conn.execute(b"AUTH", *args)
        except RedisReplyError as e:
            raise BackendUnavailable(f"Redis at {address.display} refused AUTH: {e}") from None

    async def _name_connection(self, conn: RespConnection, role: str) -> None:
        """Let ``CLIENT LIST`` tell operators which node and role a connection is."""
        try:
            await conn.execute(b"CLIENT", b"SETNAME", f"improto:{self.node_id}:{role}")
        except RedisReplyError:
            pass

    async def _prepare_commands(self, conn: RespConnection) -> None:
        await self._authenticate(conn)
        await self._name_connection(conn, "cmd")
        if self.address.db:
            try:
                await conn.execute(b"SELECT", self.address.db)
            except RedisReplyError as e:
                raise BackendUnavailable(
                    f"Redis at {self.address.display} refused db {self.address.db}: {e}"
                ) from None
        store = self._presence_store
        await store.load_scripts(conn)
        await self._streams.load_scripts(conn)
        await store.heartbeat(conn)
        await self._reregister(conn)

    def _reregister(self, conn: RespConnection) -> Deferred[Any]:
        """Make Redis hold exactly this node's entries (after a reconnect or expiry)."""
        store = self._presence_store
        tombstones = list(self._tombstones)
        calls = [store.remove(conn, scope, member) for scope, member in tombstones]
        calls += [store.add(conn, scope, member) for scope, member in self._presence]

        def done(_: object) -> None:
            self._tombstones.difference_update(tombstones)

        return gatherResults(calls, consumeErrors=True).addCallback(done)

    async def _prepare_subscriber(self, conn: RespConnection) -> None:
        self._sub_sent.clear()
        self._sub_active.clear()
        await self._authenticate(conn)
        await self._name_connection(conn, "sub")
        await gatherResults(
            [self._send_subscribe(conn, channel) for channel in list(self._wanted)],
            consumeErrors=True,
        )

    def _sync_subscriptions(self, conn: RespConnection) -> None:
        """Catch up with subscribe/unsubscribe calls made while preparing."""
        for channel in set(self._wanted) - self._sub_sent:
            self._send_subscribe(conn, channel).addErrback(lambda _: None)
        for channel in self._sub_sent - set(self._wanted):
            self._send_unsubscribe(conn, channel)

    # -- pub/sub ----------------------------------------------------------

    def _channel_key(self, channel: str) -> bytes:
        return self._prefix + channel.encode("utf-8")

    def publish(self, channel: str, envelope: Envelope) -> Deferred[int]:
        try:
            conn = self._command_connection("publish")
            payload = encode_envelope(envelope)
        except Exception:
            return fail()
        self.stats.published += 1
        d = conn.execute(b"PUBLISH", self._channel_key(channel), payload)
        return d.addErrback(_as_unavailable, "PUBLISH")

    def subscribe(self, channel: str, callback: EnvelopeCallback) -> Deferred[None]:
        """
        While Redis is unreachable the channel is still recorded, so it is
        subscribed on reconnect, but the call fails at once with
        ``BackendUnavailable`` rather than waiting for Redis.
        """
        if self._state is BackendState.STOPPED:
            return fail(BackendUnavailable("cannot subscribe: backend stopped"))
        self._wanted[channel] = callback
        conn = self._sub.ready
        if conn is None:
            return fail(
                BackendUnavailable(
                    f"cannot subscribe {channel!r} yet ({self._detail}); it will be once Redis is back"
                )
            )
        if channel in self._sub_active:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if channel not in self._sub_sent:
            self._send_subscribe(conn, channel).addErrback(lambda _: None)
        self._sub_waiters.setdefault(channel, []).append(waiter)
        return waiter

    def _send_subscribe(self, conn: RespConnection, channel: str) -> Deferred[None]:
        self._sub_sent.add(channel)
        waiters: list[Deferred[None]] = []
        self._sub_waiters[channel] = waiters

        def confirmed(_: object) -> None:
            if self._sub_waiters.get(channel) is waiters:
                del self._sub_waiters[channel]
                if channel in self._sub_sent:
                    self._sub_active.add(channel)
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> Failure:
            if self._sub_waiters.get(channel) is waiters:
                del self._sub_waiters[channel]
            failure = _as_unavailable(failure, "SUBSCRIBE")
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        d = conn.execute(b"SUBSCRIBE", self._channel_key(channel))
        return d.addCallbacks(confirmed, failed)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        self._wanted.pop(channel, None)
        conn = self._sub.ready
        if conn is None or channel not in self._sub_sent:
            return succeed(None)
        return self._send_unsubscribe(conn, channel)

    def _send_unsubscribe(self, conn: RespConnection, channel: str) -> Deferred[None]:
        self._sub_sent.discard(channel)
        self._sub_active.discard(channel)
        d = conn.execute(b"UNSUBSCRIBE", self._channel_key(channel))
        # A lost connection unsubscribes as surely as a confirmation does.
        return d.addBoth(lambda _: None)

    def _on_message(self, raw_channel: bytes, payload: bytes) -> None:
        if not raw_channel.startswith(self._prefix):
            return
        channel = raw_channel[len(self._prefix) :].decode("utf-8", "replace")
        callback = self._wanted.get(channel)
        if callback is None:
            return
        try:
            envelope = decode_envelope(payload)
        except WireError as e:
            self._decode_failed(e.cause, channel)
            return
        self.stats.received += 1
        try:
            callback(envelope)
        except Exception:
            _log.failure(
                "Redis backend: callback for channel {channel} failed", channel=channel, node_id=self.node_id
            )

    def _decode_failed(self, cause: str, channel: str) -> None:
        self.stats.decode_errors[cause] += 1
        if self.stats.decode_errors[cause] == 1:
            _log.warn(
                "Redis backend: dropping undecodable message on {channel}: {cause} "
                "(logged once per cause; see stats.decode_errors for counts)",
                node_id=self.node_id,
                channel=channel,
                cause=cause,
            )

    # -- history (improto.backends.redis.streams) ---------------------------

    def append(
        self, stream: str, channel: str, envelope: Envelope,
        idempotency_key: str | None = None, idempotency_ttl: float = 0,
    ) -> Deferred[Appended]:
        try:
            conn = self._command_connection("append")
        except BackendUnavailable:
            return fail()
        self.stats.published += 1
        d = self._streams.append(
            conn, self._channel_key(channel), stream, envelope, self.retention,
            idempotency_key, idempotency_ttl)
        return d.addErrback(_as_unavailable, "append")

    def history(
        self, stream: str, after_seq: int, limit: int, before_seq: int | None = None
    ) -> Deferred[HistoryPage]:
        try:
            conn = self._command_connection("read history")
        except BackendUnavailable:
            return fail()
        d = self._streams.history(conn, stream, after_seq, limit, before_seq, self.retention)
        return d.addErrback(_as_unavailable, "history")

    def mark_seen(self, user: str, cursor: int, ttl: float) -> Deferred[None]:
        try:
            conn = self._command_connection("mark seen")
        except BackendUnavailable:
            return fail()
        return self._streams.mark_seen(conn, user, cursor, ttl).addErrback(_as_unavailable, "mark_seen")

    def last_seen(self, user: str) -> Deferred[int | None]:
        try:
            conn = self._command_connection("read last seen")
        except BackendUnavailable:
            return fail()
        return self._streams.last_seen(conn, user).addErrback(_as_unavailable, "last_seen")

    # -- presence ---------------------------------------------------------

    def presence_add(self, scope: str, member: str) -> Deferred[bool]:
        try:
            conn = self._command_connection("add presence")
        except BackendUnavailable:
            return fail()
        entry = (scope, member)
        self._tombstones.discard(entry)
        self._presence.add(entry)

        def failed(failure: Failure) -> Failure:
            self._presence.discard(entry)
            self._tombstones.add(entry)
            return _as_unavailable(failure, "presence_add")

        return self._presence_store.add(conn, scope, member).addErrback(failed)

    def presence_remove(self, scope: str, member: str) -> Deferred[bool]:
        entry = (scope, member)
        self._presence.discard(entry)
        try:
            conn = self._command_connection("remove presence")
        except BackendUnavailable:
            if self._state is not BackendState.STOPPED:
                self._tombstones.add(entry)
            return fail()

        def failed(failure: Failure) -> Failure:
            self._tombstones.add(entry)
            return _as_unavailable(failure, "presence_remove")

        return self._presence_store.remove(conn, scope, member).addErrback(failed)

    def presence_members(self, scope: str) -> Deferred[list[str]]:
        try:
            conn = self._command_connection("list presence")
        except BackendUnavailable:
            return fail()
        d = self._presence_store.members(conn, scope)
        return d.addErrback(_as_unavailable, "presence_members")

    # -- heartbeat --------------------------------------------------------

    def _beat(self) -> None:
        conn = self._cmd.ready
        if conn is not None:
            self._presence_store.heartbeat(conn).addCallbacks(
                lambda existed: self._heartbeat_done(conn, existed), self._heartbeat_failed
            )
        sub = self._sub.ready
        if sub is not None:
            # A PING the watchdog can time out on: the only way to notice a
            # subscriber connection that died without a FIN.
            sub.execute(b"PING").addErrback(lambda _: None)

    def _heartbeat_done(self, conn: RespConnection, existed: bool) -> None:
        if existed or not (self._presence or self._tombstones):
            return
        _log.warn(
            "Redis backend: heartbeat of node {node_id} had expired (reactor stalled for "
            "over {ttl}s?); re-registering {entries} presence entr(y/ies)",
            node_id=self.node_id,
            ttl=self.options.heartbeat_ttl,
            entries=len(self._presence),
        )
        self._reregister(conn).addErrback(self._heartbeat_failed)

    def _heartbeat_failed(self, failure: Failure) -> None:
        if not failure.check(BackendUnavailable):
            _log.failure("Redis backend: heartbeat failed", failure, node_id=self.node_id)
