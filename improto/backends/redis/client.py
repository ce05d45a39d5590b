"""
RESP (the Redis protocol) over a Twisted transport; hiredis does the bytes.

:class:`RespConnection` is a Twisted ``Protocol``: it packs commands with
``hiredis.pack_command``, parses replies with ``hiredis.Reader`` and
matches them to callers' Deferreds in order. It owns no socket and never
blocks, so it runs on whatever reactor ``twistd`` installs.

Why improto carries a client at all, when libraries exist:

* redis-py's ``redis.asyncio`` could run under Twisted's asyncio reactor,
  but that would force ``twistd -r asyncio`` on every deployment and put
  an asyncio future between each command and its Deferred (an extra
  event-loop hop per call). Its blocking client cannot run on the reactor
  thread at all.
* txredisapi (1.6.0, October 2026, maintained, Twisted-native) speaks
  RESP2 only (no ``HELLO 3``/RESP3) and pipelines only inside an explicit
  ``pipeline()``/``execute_pipeline()`` section that holds a connection;
  outside it every command is its own ``transport.write``, packed in pure
  Python. improto wants every command of one reactor turn in one write
  without callers opting in (``benchmarks/bench_redis_batching.py``
  measures what that buys), and a subscriber connection whose
  ``SUBSCRIBE`` confirmations answer the caller that sent them.

What is left here is the part no library does for us: the write batching,
reply matching, push routing and the command timeout. Parsing and
packing stay in hiredis's C code.

Commands issued in one reactor turn are written with one
``transport.write`` at the end of the turn: a burst of publishes costs one
syscall and one Redis read instead of one each.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar, cast
from typing import Protocol as TypingProtocol

import attrs
import hiredis
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from improto.backends.interface import BackendUnavailable

#: What a command argument may be; hiredis encodes ``str`` as UTF-8 and
#: numbers as their ``repr``.
Arg = bytes | str | int | float


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


class RedisProtocolError(Exception):
    """The byte stream from Redis is not valid RESP."""


def make_reader() -> hiredis.Reader:
    """A reader whose ``gets()`` returns error replies as :class:`RedisReplyError`."""
    return hiredis.Reader(protocolError=RedisProtocolError, replyError=RedisReplyError)


def pack(*args: Arg) -> bytes:
    """One command as RESP bytes."""
    # hiredis's stub types the argument as a 1-tuple.
    return cast(bytes, hiredis.pack_command(args))  # type: ignore[arg-type]


@attrs.define
class RespStats:
    """Counters of one logical link, kept across reconnects."""

    commands: int = 0
    writes: int = 0
    replies: int = 0
    #: Reconnect attempts scheduled after a failure or a loss.
    reconnects: int = 0


MessageHandler = Callable[[bytes, bytes], None]


class Batch(TypingProtocol):
    """
    Many callers' requests sent as one command (:meth:`RespConnection.execute_batch`):
    callers add to it while it is the last command queued, and it is packed
    only when the turn's writes go out.
    """

    def pack(self) -> bytes:
        """The whole command as RESP bytes."""


BatchT = TypeVar("BatchT", bound=Batch)


class RespConnection(Protocol, TimeoutMixin):
    """
    One Redis connection: pipelined commands, replies matched in order.

    With ``on_message`` set the connection is meant for subscribe mode:
    ``message`` pushes go to the handler; every other reply (subscribe
    and unsubscribe confirmations, ``pong``) answers the oldest pending
    command, exactly like an ordinary reply.

    A connection never leaves a Deferred hanging: when it is lost, or when
    Redis leaves a command unanswered for ``timeout`` seconds (the
    connection is then aborted), every pending command fails with
    :class:`BackendUnavailable`. The timeout runs only while a command is
    pending and restarts with every reply (``TimeoutMixin``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float,
        stats: RespStats | None = None,
        batch_writes: bool = True,
        on_message: MessageHandler | None = None,
    ) -> None:
        self._clock = clock
        # TimeoutMixin schedules with self.callLater: use our clock.
        self.callLater = clock.callLater  # type: ignore[method-assign, assignment]
        self._timeout = timeout
        self.stats = stats if stats is not None else RespStats()
        self._batch_writes = batch_writes
        self.on_message = on_message
        self._reader = make_reader()
        self._pending: collections.deque[Deferred[Any]] = collections.deque()
        self._outgoing: list[bytes | Batch] = []
        # The batch queued last this turn, while no other command came after it.
        self._tail: Batch | None = None
        self._flush_call: IDelayedCall | None = None
        self._lost_reason: str | None = None
        self._open = False
        self.lost: Deferred[str] = Deferred()

    def connectionMade(self) -> None:
        self._transport = cast(ITCPTransport, self.transport)
        self._open = True
        # Nagle's algorithm would hold a lone request back for an ACK that
        # Redis delays, adding tens of milliseconds to every round trip.
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(self._transport, option, None)
            if setter is not None:
                setter(True)

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def pending(self) -> int:
        return len(self._pending)

    def execute(self, *args: Arg) -> Deferred[Any]:
        """Send one command; fires with its reply or fails with the error."""
        if not self._open:
            return self._not_connected()
        return self._queue(hiredis.pack_command(args))  # type: ignore[arg-type]

    @property
    def unproxied(self) -> RespConnection:
        """
        This connection itself. ``ClientService`` hands its owner a proxy
        that forwards every attribute through a Python ``__getattr__``, per
        command; the transport keeps talking to the proxy (which is how the
        service hears of a lost connection), so calls may go straight here.
        """
        return self

    def tail_batch(self, kind: type[BatchT]) -> BatchT | None:
        """
        The batch of ``kind`` queued last in this turn, if no other command
        was queued after it: what :meth:`execute_batch` sent may still grow.
        Adding to it keeps the order of commands as callers issued them.
        """
        tail = self._tail
        return tail if type(tail) is kind else None  # type: ignore[return-value]

    def execute_batch(self, batch: Batch) -> Deferred[Any]:
        """
        Send ``batch`` as one command, packed at the end of the turn (at
        once without write batching); fires with its reply like :meth:`execute`.
        """
        if not self._open:
            return self._not_connected()
        if not self._batch_writes:
            return self._queue(batch.pack())
        d = self._queue(batch)
        self._tail = batch
        return d

    def _not_connected(self) -> Deferred[Any]:
        return fail(BackendUnavailable(f"Redis connection failed: {self._lost_reason or 'not connected'}"))

    def _queue(self, command: bytes | Batch) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._pending.append(d)
        self.stats.commands += 1
        if self._batch_writes:
            self._tail = None
            self._outgoing.append(command)
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self.flush)
        else:
            self.stats.writes += 1
            self._transport.write(command)  # type: ignore[arg-type]
        if self.timeOut is None:
            self.setTimeout(self._timeout)
        return d

    def flush(self) -> None:
        """Write what this turn queued now rather than at the end of the turn."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._tail = None
        if self._outgoing and self._open:
            outgoing, self._outgoing = self._outgoing, []
            try:
                data = b"".join([c if type(c) is bytes else c.pack() for c in outgoing])  # type: ignore[union-attr]
            except Exception as e:
                # Replies would no longer match their commands: start afresh.
                self.abort(f"could not pack a batch of commands ({e!r:.80})")
                return
            self.stats.writes += 1
            self._transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)
        while self._open:
            try:
                reply = self._reader.gets()
            except RedisProtocolError as e:
                self.abort(f"protocol error from Redis: {e}")
                return
            if reply is False:
                break
            if self.handle_push(reply):
                continue
            if not self._pending:
                self.abort(f"unsolicited reply from Redis: {reply!r:.80}")
                return
            self.stats.replies += 1
            d = self._pending.popleft()
            if isinstance(reply, RedisReplyError):
                d.errback(reply)
            else:
                d.callback(reply)
        if self._pending:
            self.resetTimeout()
        elif self.timeOut is not None:
            self.setTimeout(None)

    def handle_push(self, reply: Any) -> bool:
        """Deliver ``reply`` if it is a pub/sub push rather than an answer."""
        if (
            self.on_message is not None
            and type(reply) is list
            and len(reply) == 3
            and reply[0] == b"message"
        ):
            self.on_message(reply[1], reply[2])
            return True
        return False

    def timeoutConnection(self) -> None:
        self.abort(f"Redis did not answer within {self._timeout:g}s")

    def abort(self, reason: str) -> None:
        """Drop the connection now; pending commands fail, citing ``reason``."""
        if self._lost_reason is None:
            self._lost_reason = reason
        self._transport.abortConnection()

    def close(self, reason: str = "connection closed by improto") -> None:
        """Send what is queued, then close; :attr:`lost` fires once it is gone."""
        if self._open:
            if self._lost_reason is None:
                self._lost_reason = reason
            self.flush()
            self._transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._open = False
        self.setTimeout(None)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._outgoing = []
        self._tail = None
        if self._lost_reason is None:
            self._lost_reason = _one_line(reason)
        pending, self._pending = self._pending, collections.deque()
        # Owners hear of the loss first, so that code woken by the failures
        # below already sees the backend as unavailable.
        self.lost.callback(self._lost_reason)
        error = BackendUnavailable(f"Redis connection failed: {self._lost_reason}")
        for d in pending:
            d.errback(error)


def _one_line(reason: Failure | None) -> str:
    if reason is None or reason.check(ConnectionDone):
        return "connection closed by Redis"
    text = " ".join(reason.getErrorMessage().split()).rstrip(".")
    return f"connection lost ({text})"


def as_unavailable(failure: Failure, what: str) -> Failure:
    """A command's error reply, as the ``BackendUnavailable`` callers expect."""
    if failure.check(RedisReplyError):
        return Failure(BackendUnavailable(f"Redis refused {what}: {failure.value}"))
    return failure
