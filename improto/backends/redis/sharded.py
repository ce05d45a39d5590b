"""
Sharded pub/sub (Redis 7 ``SSUBSCRIBE``/``SPUBLISH``) for the Cluster backend.

A sharded channel lives on the master that owns its slot; a node keeps
one subscriber connection per master and subscribes each wanted channel
on the connection of its current owner. Redis ends a sharded
subscription on its own when the slot moves away (migration, failover):
it pushes ``sunsubscribe`` for the channel, unasked. So on a sharded
subscriber connection every ``sunsubscribe`` is a push, never a reply,
and improto sends ``SUNSUBSCRIBE`` without waiting for an answer;
``ssubscribe`` confirmations still answer the command that asked.

:class:`ShardedSubscriptions` keeps what is wanted, where each channel is
subscribed (which connection) and re-places channels when the owner
changes. It reuses :class:`~improto.backends.redis.subscriptions.Subscriptions`
for turning messages into envelopes.

A channel ``c`` is the sharded channel ``<prefix>{c}``: hash-tagged like
the keys of the history stream of the same name
(:mod:`~improto.backends.redis.streams`), so the append script, which
runs on the stream's slot, may ``SPUBLISH`` on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.python.failure import Failure

from improto.backends.interface import BackendUnavailable, EnvelopeCallback
from improto.backends.redis.client import (
    RedisReplyError,
    RespConnection,
    as_unavailable,
    pack,
)

if TYPE_CHECKING:
    from improto.backends.redis.backend import RedisStats

from improto.backends.redis.subscriptions import Subscriptions


def channel_key(prefix: bytes, channel: str) -> bytes:
    """The sharded channel of ``channel``: ``<prefix>{<channel>}``, in the slot of its stream's keys."""
    return b"".join((prefix, b"{", channel.encode("utf-8"), b"}"))


class ShardedSubscriber(RespConnection):
    """A subscriber connection for ``SSUBSCRIBE``: ``smessage`` and ``sunsubscribe`` are pushes."""

    on_sunsubscribe: Callable[[bytes], None] = staticmethod(lambda channel: None)  # type: ignore[assignment]

    def handle_sunsubscribe(self, handler: Callable[[bytes], None]) -> None:
        # A method, not an attribute set from outside: owners hold
        # ClientService's proxy, which forwards reads but not writes.
        self.on_sunsubscribe = handler  # type: ignore[method-assign, assignment]

    def send_only(self, *args: bytes) -> None:
        """A command whose answer arrives as a push (``SUNSUBSCRIBE``)."""
        if not self.is_open:
            return
        self._outgoing.append(pack(*args))
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def handle_push(self, reply: Any) -> bool:
        """Sharded pushes: ``smessage``, and ``sunsubscribe`` when a slot moved."""
        if type(reply) is list and len(reply) == 3:
            kind = reply[0]
            if kind == b"smessage":
                if self.on_message is not None:
                    self.on_message(reply[1], reply[2])
                return True
            if kind == b"sunsubscribe":
                self.on_sunsubscribe(reply[1])
                return True
        return False


class ShardedSubscriptions(Subscriptions):
    """
    ``owner(channel_key)`` is the ready subscriber connection of the
    channel's current master, or ``None``; ``refresh()`` asks the backend
    to re-read the slot map, after which it calls :meth:`reconcile`.
    """

    def __init__(
        self,
        prefix: bytes,
        node_id: str,
        stats: RedisStats,
        owner: Callable[[bytes], ShardedSubscriber | None],
        refresh: Callable[[], None],
    ) -> None:
        super().__init__(prefix, node_id, stats)
        self._owner = owner
        self._refresh = refresh
        self.placed: dict[str, ShardedSubscriber] = {}
        self._confirmed: set[str] = set()

    @property
    def active(self) -> int:
        return len(self._confirmed)

    def _key(self, channel: str) -> bytes:
        return channel_key(self._prefix, channel)

    def _channel_of(self, raw_channel: bytes) -> str:
        return raw_channel[len(self._prefix) + 1 : -1].decode("utf-8", "replace")

    def on_message(self, raw_channel: bytes, payload: bytes) -> None:
        if raw_channel.startswith(self._prefix + b"{") and raw_channel.endswith(b"}"):
            plain = self._prefix + raw_channel[len(self._prefix) + 1 : -1]
            super().on_message(plain, payload)

    def subscribe(self, conn: Any, channel: str, callback: EnvelopeCallback, detail: str) -> Deferred[None]:
        self.wanted[channel] = callback
        owner = self._owner(self._key(channel))
        if owner is None:
            return fail(
                BackendUnavailable(
                    f"cannot subscribe {channel!r} yet ({detail}); it will be once its shard is back"
                )
            )
        if self.placed.get(channel) is owner and channel in self._confirmed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self.placed.get(channel) is not owner:
            self.place(channel, owner).addErrback(lambda _: None)
        self._waiters.setdefault(channel, []).append(waiter)
        return waiter

    def unsubscribe(self, conn: Any, channel: str) -> Deferred[None]:
        self.wanted.pop(channel, None)
        placed = self.placed.pop(channel, None)
        self._confirmed.discard(channel)
        if placed is not None:
            placed.send_only(b"SUNSUBSCRIBE", self._key(channel))
        return succeed(None)

    def place(self, channel: str, conn: ShardedSubscriber) -> Deferred[None]:
        """``SSUBSCRIBE`` on ``conn``, leaving the channel's previous connection."""
        old = self.placed.get(channel)
        if old is not None and old is not conn:
            old.send_only(b"SUNSUBSCRIBE", self._key(channel))
        self.placed[channel] = conn
        self._confirmed.discard(channel)
        waiters = self._waiters.pop(channel, [])
        self._waiters[channel] = waiters

        def confirmed(_: object) -> None:
            if self._waiters.get(channel) is waiters:
                del self._waiters[channel]
            if self.placed.get(channel) is conn:
                self._confirmed.add(channel)
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> Failure:
            if self._waiters.get(channel) is waiters:
                del self._waiters[channel]
            if self.placed.get(channel) is conn:
                del self.placed[channel]
            if failure.check(RedisReplyError) and str(failure.value).startswith(("MOVED", "ASK")):
                self._refresh()
            failure = as_unavailable(failure, "SSUBSCRIBE")
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        return conn.execute(b"SSUBSCRIBE", self._key(channel)).addCallbacks(confirmed, failed)

    def resubscribe_on(self, conn: ShardedSubscriber, owns: Callable[[bytes], bool]) -> Deferred[Any]:
        """Set up a new connection: subscribe the wanted channels its master owns."""
        conn.handle_sunsubscribe(lambda raw: self.on_sunsubscribe(conn, raw))
        calls = [self.place(c, conn) for c in list(self.wanted) if owns(self._key(c))]
        return gatherResults(calls, consumeErrors=True)

    def lost(self, conn: RespConnection) -> None:
        for channel in [c for c, placed in self.placed.items() if placed is conn]:
            del self.placed[channel]
            self._confirmed.discard(channel)

    def on_sunsubscribe(self, conn: ShardedSubscriber, raw_channel: bytes) -> None:
        channel = self._channel_of(raw_channel)
        if self.placed.get(channel) is not conn:
            return
        del self.placed[channel]
        self._confirmed.discard(channel)
        if channel in self.wanted:
            # The slot moved away under us: find its new owner.
            self._refresh()

    def reconcile(self) -> None:
        """Subscribe every wanted channel on its owner's connection, where it is not yet."""
        for channel in list(self.wanted):
            owner = self._owner(self._key(channel))
            if owner is not None and self.placed.get(channel) is not owner:
                self.place(channel, owner).addErrback(lambda _: None)

    def clear(self) -> None:
        super().clear()
        self.placed.clear()
        self._confirmed.clear()
