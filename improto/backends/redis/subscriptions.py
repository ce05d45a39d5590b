"""
This node's channel subscriptions in Redis.

The router subscribes and unsubscribes whenever it likes, connected or
not; the subscriber connection comes and goes. :class:`Subscriptions`
keeps what is *wanted* (each channel's callback), makes the current
connection converge on it with ``SUBSCRIBE``/``UNSUBSCRIBE``, fires the
callers' Deferreds when Redis confirms, and turns message pushes back
into envelopes for the wanted callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import BackendUnavailable, EnvelopeCallback
from improto.backends.redis.client import RespConnection, as_unavailable
from improto.backends.redis.wire import WireError, decode_envelope, native_and_unpositioned

if TYPE_CHECKING:
    from improto.backends.redis.backend import RedisStats

_log = Logger()


def _always() -> bool:
    return True


def native_listeners(subscriptions: str) -> property:
    """
    A backend's ``native_listeners`` (its :class:`Subscriptions` at the
    attribute ``subscriptions``): whether any session on this node takes
    native-only envelopes; the router sets it. While it answers False, a
    native-only envelope without a history position is dropped before it
    is decoded.
    """

    def ask(backend: Any) -> Callable[[], bool]:
        return getattr(backend, subscriptions).natives_here  # type: ignore[no-any-return]

    def tell(backend: Any, natives_here: Callable[[], bool]) -> None:
        getattr(backend, subscriptions).natives_here = natives_here

    return property(ask, tell)


class Subscriptions:
    def __init__(self, prefix: bytes, node_id: str, stats: RedisStats) -> None:
        self._prefix = prefix
        self._node_id = node_id
        self._stats = stats
        self.wanted: dict[str, EnvelopeCallback] = {}
        #: Channel names by the raw channel of a push (prefix included),
        #: decoded once rather than per message.
        self._names: dict[bytes, str] = {}
        # On the current subscriber connection: SUBSCRIBE sent, SUBSCRIBE
        # confirmed, and callers waiting for the latest SUBSCRIBE of a
        # channel to be confirmed.
        self._sent: set[str] = set()
        self._active: set[str] = set()
        self._waiters: dict[str, list[Deferred[None]]] = {}
        #: Whether any session here takes native-only envelopes (the router
        #: says, through the backend's ``native_listeners``).
        self.natives_here: Callable[[], bool] = _always

    @property
    def active(self) -> int:
        """Channels subscribed on the current connection."""
        return len(self._sent)

    def _key(self, channel: str) -> bytes:
        return self._prefix + channel.encode("utf-8")

    def subscribe(
        self, conn: RespConnection | None, channel: str, callback: EnvelopeCallback, detail: str
    ) -> Deferred[None]:
        """Want ``channel``; fires once Redis confirms, fails at once without ``conn``."""
        self.wanted[channel] = callback
        if conn is None:
            return fail(
                BackendUnavailable(f"cannot subscribe {channel!r} yet ({detail}); it will be once Redis is back")
            )
        if channel in self._active:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if channel not in self._sent:
            self._send_subscribe(conn, channel).addErrback(lambda _: None)
        self._waiters.setdefault(channel, []).append(waiter)
        return waiter

    def unsubscribe(self, conn: RespConnection | None, channel: str) -> Deferred[None]:
        self.wanted.pop(channel, None)
        if conn is None or channel not in self._sent:
            return succeed(None)
        return self._send_unsubscribe(conn, channel)

    def clear(self) -> None:
        self.wanted.clear()

    async def resubscribe(self, conn: RespConnection) -> None:
        """Set up a new subscriber connection: subscribe every wanted channel."""
        self._sent.clear()
        self._active.clear()
        await gatherResults(
            [self._send_subscribe(conn, channel) for channel in list(self.wanted)],
            consumeErrors=True,
        )

    def sync(self, conn: RespConnection) -> None:
        """Catch up with subscribe/unsubscribe calls made during the set-up."""
        for channel in set(self.wanted) - self._sent:
            self._send_subscribe(conn, channel).addErrback(lambda _: None)
        for channel in self._sent - set(self.wanted):
            self._send_unsubscribe(conn, channel)

    def _send_subscribe(self, conn: RespConnection, channel: str) -> Deferred[None]:
        self._sent.add(channel)
        waiters: list[Deferred[None]] = []
        self._waiters[channel] = waiters

        def confirmed(_: object) -> None:
            if self._waiters.get(channel) is waiters:
                del self._waiters[channel]
                if channel in self._sent:
                    self._active.add(channel)
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> Failure:
            if self._waiters.get(channel) is waiters:
                del self._waiters[channel]
            failure = as_unavailable(failure, "SUBSCRIBE")
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        return conn.execute(b"SUBSCRIBE", self._key(channel)).addCallbacks(confirmed, failed)

    def _send_unsubscribe(self, conn: RespConnection, channel: str) -> Deferred[None]:
        self._sent.discard(channel)
        self._active.discard(channel)
        d = conn.execute(b"UNSUBSCRIBE", self._key(channel))
        # A lost connection unsubscribes as surely as a confirmation does.
        return d.addBoth(lambda _: None)

    def on_message(self, raw_channel: bytes, payload: bytes) -> None:
        channel = self._names.get(raw_channel)
        if channel is None:
            if not raw_channel.startswith(self._prefix):
                return
            channel = raw_channel[len(self._prefix) :].decode("utf-8", "replace")
            # Bounded, but above the channels wanted: a node with more never thrashes.
            if len(self._names) >= max(4096, 2 * len(self.wanted)):
                self._names.clear()
            self._names[raw_channel] = channel
        if native_and_unpositioned(payload) and not self.natives_here():
            # It would reach nobody here (every node hears its own presence
            # announcements: four per connection): not even decoded. One
            # with a position is decoded always: the stream's seq is tracked.
            self._stats.received += 1
            return
        callback = self.wanted.get(channel)
        if callback is None:
            return
        try:
            envelope = decode_envelope(payload)
        except WireError as e:
            self._decode_failed(e.cause, channel)
            return
        self._stats.received += 1
        try:
            callback(envelope)
        except Exception:
            _log.failure(
                "Redis backend: callback for channel {channel} failed", channel=channel, node_id=self._node_id
            )

    def _decode_failed(self, cause: str, channel: str) -> None:
        errors = self._stats.decode_errors
        errors[cause] += 1
        if errors[cause] == 1:
            _log.warn(
                "Redis backend: dropping undecodable message on {channel}: {cause} "
                "(logged once per cause; see stats.decode_errors for counts)",
                node_id=self._node_id,
                channel=channel,
                cause=cause,
            )
