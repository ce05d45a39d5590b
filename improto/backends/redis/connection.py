"""
One logical Redis connection that outlives its TCP connections.

Twisted's ``ClientService`` connects, reconnects after a loss and backs
off (``backoffPolicy``). :class:`RedisLink` adds what ``ClientService``
leaves to its user: the Redis set-up of every new connection (AUTH,
SELECT, resubscribe, re-register presence: the owner's ``setup``
coroutine), the notion of a *ready* connection (set up, not just
connected), and three notifications to its owner: ``on_ready``,
``on_lost`` and ``on_retry_failed``. The link knows nothing of pub/sub or
presence; the backend knows nothing of reconnecting.

Why ``prepareConnection`` starts the set-up but does not wait for it:
in Twisted 26.10 a connection lost while the Deferred returned by
``prepareConnection`` is pending, or after it failed (a rejected
connection is not closed by ``ClientService``), reaches its state machine
in a state with no transition for the loss, and automat raises
``NoTransition`` from ``connectionLost``. So the service sees every TCP
connection as made at once, and a connection that fails its set-up is
aborted: an ordinary loss of a connected connection, which it handles.
Since ``ClientService`` then forgets its failure count, the retry policy
also counts consecutive failed set-ups (a Redis refusing AUTH is retried
with backoff, not every ``reconnect_initial_delay``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Coroutine
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, FirstError, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from improto.backends.interface import BackendUnavailable
from improto.backends.redis.client import MessageHandler, RedisReplyError, RespConnection, RespStats
from improto.backends.redis.options import RedisAddress, RedisOptions, one_line, refusal


class _QuietClientService(ClientService):
    # ClientService logs every retry it schedules, at info level: a line
    # per attempt for as long as Redis is down. The backend logs the loss
    # and the recovery once each instead.
    _log = Logger(observer=LogPublisher())  # a publisher nobody observes


@implementer(IStreamClientEndpoint)
class _ExplainedEndpoint:
    """Turns a failed connect into one line that names the address and the cause."""

    def __init__(self, inner: IStreamClientEndpoint, where: str, on_failure: Callable[[BackendUnavailable], None]) -> None:
        self._inner = inner
        self._where = where
        self._on_failure = on_failure

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure
            error = BackendUnavailable(f"cannot reach Redis at {self._where}: {_reason(failure)}")
            self._on_failure(error)
            return Failure(error)

        return self._inner.connect(factory).addErrback(failed)


def _reason(failure: Failure) -> str:
    """The cause of a failed connect attempt, as users know it."""
    value = failure.value
    if isinstance(value, DNSLookupError):
        text = f"cannot resolve host ({value.args[0] if value.args else 'no results'})"
    elif isinstance(value, ConnectError) and value.args and isinstance(value.args[0], str) and value.args[0]:
        text = value.args[0]
    else:
        text = failure.getErrorMessage() or type(value).__name__
    return one_line(text)


Setup = Callable[[RespConnection], Coroutine[Any, Any, None]]


class RedisLink:
    """
    A ``ClientService`` for one role (``command`` or ``subscriber``).

    Every new connection is set up with ``AUTH`` (if the address has a
    password), ``CLIENT SETNAME client_name`` (so that ``CLIENT LIST``
    tells operators which node and role it is), ``SELECT`` when
    ``select_db`` and the db is not 0 (pub/sub ignores the db), then the
    owner's ``setup`` coroutine.

    :attr:`ready` is the connection to use, or ``None`` while there is no
    set-up one. ``on_ready(conn)`` fires each time a connection finishes
    its set-up, ``on_lost(reason)`` when a ready connection goes, and
    ``on_retry_failed(reason)`` when a reconnect attempt fails; none of
    them fires before :meth:`start` has fired.

    ``protocol`` and ``endpoint`` let the Cluster and Sentinel backends
    bring their own connection class (sharded pushes) and their own way
    of finding the server (ask Sentinel first).
    """

    def __init__(
        self,
        name: str,
        client_name: str,
        reactor: Any,
        address: RedisAddress,
        options: RedisOptions,
        *,
        setup: Setup,
        stats: RespStats,
        on_ready: Callable[[RespConnection], None],
        on_lost: Callable[[str], None],
        on_retry_failed: Callable[[str], None],
        on_message: MessageHandler | None = None,
        select_db: bool = True,
        protocol: type[RespConnection] = RespConnection,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self.name = name
        self._select_db = select_db
        self.client_name = client_name
        self.address = address
        self.ready: RespConnection | None = None
        self.stats = stats
        self._reactor = reactor
        self._setup = setup
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_retry_failed = on_retry_failed
        self._conn: RespConnection | None = None
        self._rejected = 0
        self._starting: Deferred[RespConnection] | None = None
        self._started = False
        self._closed = False
        factory = Factory.forProtocol(
            functools.partial(  # type: ignore[arg-type]
                protocol,
                reactor,
                timeout=options.command_timeout,
                stats=stats,
                batch_writes=options.batch_writes,
                on_message=on_message,
            )
        )
        # One "Starting factory" line per reconnect attempt is noise.
        factory.noisy = False
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=options.connect_timeout)
        self._backoff = backoffPolicy(
            options.reconnect_initial_delay, options.reconnect_max_delay, factor=2.0, jitter=lambda: 0.0
        )
        self._service = _QuietClientService(
            _ExplainedEndpoint(endpoint, address.display, self._report_failure),
            factory,
            retryPolicy=self._retry_delay,
            clock=reactor,
            prepareConnection=self._prepare,
        )

    def start(self) -> Deferred[RespConnection]:
        """
        Connect and set up once; fails with a one-line ``BackendUnavailable``
        if that first attempt does. Reconnecting is automatic afterwards.
        """
        self._starting = Deferred()
        self._service.startService()
        return self._starting

    def close(self) -> Deferred[None]:
        """Stop reconnecting, send what is queued and close; fires once closed."""
        self._started = False
        self._closed = True
        self.ready = None
        if self._starting is not None:
            starting, self._starting = self._starting, None
            starting.errback(BackendUnavailable(f"{self.name} connection closed while starting"))
        if self._conn is not None:
            self._conn.close()
        if not self._service.running:
            return succeed(None)
        return self._service.stopService()

    def _retry_delay(self, attempt: int) -> float:
        self.stats.reconnects += 1
        # Jitter keeps a fleet of nodes from reconnecting in lockstep.
        return self._backoff(max(attempt, self._rejected) - 1) * random.uniform(0.75, 1.0)

    def _prepare(self, protocol: IProtocol) -> None:
        # ClientService passes its proxy of our protocol; commands go to the protocol itself.
        conn = cast(RespConnection, protocol).unproxied
        self._conn = conn
        conn.lost.addCallback(self._lost, conn)
        d = maybeDeferred(lambda: Deferred.fromCoroutine(self._set_up_connection(conn)))
        d.addCallbacks(lambda _: self._set_up(conn), lambda failure: self._setup_failed(conn, failure))

    async def _set_up_connection(self, conn: RespConnection) -> None:
        auth = self.address.auth_args()
        if auth is not None:
            try:
                await conn.execute(b"AUTH", *auth)
            except RedisReplyError as e:
                raise refusal(self.address, "AUTH", e) from None
        try:
            await conn.execute(b"CLIENT", b"SETNAME", self.client_name)
        except RedisReplyError:
            pass
        if self.address.db and self._select_db:
            try:
                await conn.execute(b"SELECT", self.address.db)
            except RedisReplyError as e:
                raise refusal(self.address, "SELECT", e) from None
        await self._setup(conn)

    def _set_up(self, conn: RespConnection) -> None:
        if self._closed:
            conn.close()
            return
        if not conn.is_open:
            lost = f"lost {self.name} connection to Redis at {self.address.display} during set-up"
            self._setup_failed(conn, Failure(BackendUnavailable(lost)))
            return
        self._rejected = 0
        self.ready = conn
        if self._starting is not None:
            starting, self._starting = self._starting, None
            self._started = True
            starting.callback(conn)
        elif self._started:
            self._on_ready(conn)

    def _setup_failed(self, conn: RespConnection, failure: Failure) -> None:
        while isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        value = failure.value
        if isinstance(value, BackendUnavailable):
            error = value
        elif isinstance(value, RedisReplyError):
            error = refusal(self.address, "set-up", value)
        else:
            error = BackendUnavailable(f"Redis at {self.address.display} failed set-up: {failure.getErrorMessage()}")
        self._rejected += 1
        if conn.is_open:
            conn.abort(f"set-up failed: {error}")
        self._report_failure(error)

    def _report_failure(self, error: BackendUnavailable) -> None:
        if self._starting is not None:
            starting, self._starting = self._starting, None
            # Not from inside ClientService's state machine, which the
            # owner stops in reaction (it cannot be stopped reentrantly).
            self._reactor.callLater(0, starting.errback, Failure(error))
        elif self._started:
            self._on_retry_failed(str(error))

    def _lost(self, reason: str, conn: RespConnection) -> str:
        if self._conn is conn:
            self._conn = None
        if self.ready is conn:
            self.ready = None
            if self._started:
                self._on_lost(reason)
        return reason

