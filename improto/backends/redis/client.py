"""
RESP (the Redis protocol) over a Twisted transport.

redis-py's connection classes own their sockets and block, so they cannot
run on the reactor thread. Its serializers and hiredis's ``Reader`` are
sans-IO, though: this module pairs them with a :class:`RespConnection`
protocol, so the whole exchange stays non-blocking and works on any
reactor ``twistd`` picks. Without hiredis a small pure-Python reader with
the same ``feed``/``gets`` interface takes its place.

Commands issued in one reactor turn are written with one
``transport.write`` at the end of the turn: a burst of publishes costs one
syscall and one Redis read instead of one each.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

import attrs
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from improto.backends.interface import BackendUnavailable

if HIREDIS_AVAILABLE:
    import hiredis


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


class RedisProtocolError(Exception):
    """The byte stream from Redis is not valid RESP."""


class Reader(TypingProtocol):
    def feed(self, data: bytes) -> None: ...

    def gets(self) -> Any: ...


class _Incomplete(Exception):
    pass


class PythonReader:
    """
    A RESP2 reader with hiredis's interface: ``gets()`` returns ``False``
    until a whole reply is buffered, error replies come back as
    :class:`RedisReplyError` instances rather than being raised.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self) -> Any:
        try:
            reply, pos = self._parse(self._pos)
        except _Incomplete:
            return False
        self._pos = pos
        if pos == len(self._buf) or pos > 65536:
            del self._buf[:pos]
            self._pos = 0
        return reply

    def _parse(self, pos: int) -> tuple[Any, int]:
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete()
        kind = buf[pos]
        line = bytes(buf[pos + 1 : end])
        pos = end + 2
        if kind == 0x2B:  # +
            return line, pos
        if kind == 0x2D:  # -
            return RedisReplyError(line.decode("utf-8", "replace")), pos
        try:
            number = int(line)
        except ValueError:
            raise RedisProtocolError(f"bad length or integer {line[:20]!r}") from None
        if kind == 0x3A:  # :
            return number, pos
        if kind == 0x24:  # $
            if number < 0:
                return None, pos
            if len(buf) < pos + number + 2:
                raise _Incomplete()
            return bytes(buf[pos : pos + number]), pos + number + 2
        if kind == 0x2A:  # *
            if number < 0:
                return None, pos
            items = []
            for _ in range(number):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise RedisProtocolError(f"unexpected reply type byte {bytes([kind])!r}")


def _encode_arg(value: bytes | str | int | float) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, float)):
        return repr(value).encode("ascii")
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def make_reader() -> Reader:
    if HIREDIS_AVAILABLE:
        return hiredis.Reader(protocolError=RedisProtocolError, replyError=RedisReplyError)
    return PythonReader()


def make_packer() -> Callable[..., list[bytes]]:
    """Return ``pack(*args) -> list of byte chunks`` from redis-py."""
    if HIREDIS_AVAILABLE:
        serializer = HiredisRespSerializer()

        def pack(*args: bytes | str | int | float) -> list[bytes]:
            return serializer.pack(*map(_encode_arg, args))  # type: ignore[arg-type]

        return pack
    return PythonRespSerializer(6000, _encode_arg).pack


@attrs.define
class RespStats:
    """Counters of one logical link, kept across reconnects."""

    commands: int = 0
    writes: int = 0
    replies: int = 0


MessageHandler = Callable[[bytes, bytes], None]


class RespConnection(Protocol):
    """
    One Redis connection: pipelined commands, replies matched in order.

    With ``on_message`` set the connection is meant for subscribe mode:
    ``message`` pushes go to the handler; every other reply (subscribe
    and unsubscribe confirmations, ``pong``) answers the oldest pending
    command, exactly like an ordinary reply.

    A connection never leaves a Deferred hanging: when it is lost, or when
    Redis leaves a command unanswered for ``timeout`` seconds (the
    connection is then aborted), every pending command fails with
    :class:`BackendUnavailable`.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        timeout: float,
        stats: RespStats | None = None,
        batch_writes: bool = True,
        on_message: MessageHandler | None = None,
        reader: Reader | None = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self.stats = stats if stats is not None else RespStats()
        self._batch_writes = batch_writes
        self.on_message = on_message
        self._reader = reader if reader is not None else make_reader()
        self._pack = make_packer()
        self._pending: collections.deque[Deferred[Any]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._flush_call: IDelayedCall | None = None
        self._watchdog: IDelayedCall | None = None
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

    def execute(self, *args: bytes | str | int | float) -> Deferred[Any]:
        """Send one command; fires with its reply or fails with the error."""
        if not self._open:
            return fail(BackendUnavailable(f"Redis connection failed: {self._lost_reason or 'not connected'}"))
        chunks = self._pack(*args)
        d: Deferred[Any] = Deferred()
        self._pending.append(d)
        self.stats.commands += 1
        if self._batch_writes:
            self._outgoing.extend(chunks)
            if self._flush_call is None:
                self._flush_call = self._reactor.callLater(0, self._flush)
        else:
            self._write(chunks)
        if self._watchdog is None:
            self._watchdog = self._reactor.callLater(self._timeout, self._timed_out)
        return d

    def _write(self, chunks: list[bytes]) -> None:
        self.stats.writes += 1
        self._transport.write(b"".join(chunks))

    def _flush(self) -> None:
        self._flush_call = None
        if self._outgoing and self._open:
            outgoing, self._outgoing = self._outgoing, []
            self._write(outgoing)

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
            if (
                self.on_message is not None
                and type(reply) is list
                and len(reply) == 3
                and reply[0] == b"message"
            ):
                self.on_message(reply[1], reply[2])
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
        self._rearm_watchdog()

    def _rearm_watchdog(self) -> None:
        if self._watchdog is None:
            return
        if self._pending:
            self._watchdog.reset(self._timeout)
        else:
            self._watchdog.cancel()
            self._watchdog = None

    def _timed_out(self) -> None:
        self._watchdog = None
        self.abort(f"Redis did not answer within {self._timeout:g}s")

    def abort(self, reason: str) -> None:
        """Drop the connection now; pending commands fail, citing ``reason``."""
        if self._lost_reason is None:
            self._lost_reason = reason
        self._transport.abortConnection()

    def close(self) -> Deferred[str]:
        """Send what is queued, then close; fires once the connection is gone."""
        if self._open:
            if self._lost_reason is None:
                self._lost_reason = "connection closed by improto"
            self._flush()
            self._transport.loseConnection()
        return self._observe_lost()

    def _observe_lost(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()

        def relay(reason: str) -> str:
            d.callback(reason)
            return reason

        self.lost.addCallback(relay)
        return d

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._open = False
        for call in (self._flush_call, self._watchdog):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._watchdog = None
        self._outgoing = []
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
