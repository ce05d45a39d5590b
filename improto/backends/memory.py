"""
The in-process backend: the default, and the reference for the contract.

Several :class:`MemoryBackend` objects may share one :class:`MemoryHub`;
each then behaves like a separate node, which lets tests exercise
cross-node behaviour (echo suppression, presence) without Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
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
    IImmediateBackend,
    IPrivateBackend,
    Retention,
    for_natives,
    positioned,
)
from improto.backends.memory_history import MemoryStreams


@attrs.define
class MemoryHub:
    """The shared medium: who listens to what, and who is present where."""

    channels: dict[str, dict[str, EnvelopeCallback]] = attrs.field(factory=dict)
    #: scope -> member -> the nodes it is present on. A tuple, not a set:
    #: nearly every member is on one node, and a 1-tuple is a quarter of a
    #: set's size (two per idle connection: online and the lobby).
    presence: dict[str, dict[str, tuple[str, ...]]] = attrs.field(factory=dict)
    streams: MemoryStreams = attrs.field(factory=MemoryStreams)


@implementer(IBackend, IPrivateBackend, IImmediateBackend, IAnnouncingPresence)
class MemoryBackend:
    """
    Delivers synchronously, inside ``publish`` (before its Deferred fires:
    the contract allows either order); never loses a frame. Like every
    backend it refuses publish, subscribe and presence calls once stopped.
    The ``*_now`` calls (:class:`IImmediateBackend`) are the same calls
    without a Deferred: each Deferred-returning one is its ``_now`` twin's
    answer wrapped.
    """

    def __init__(self, hub: MemoryHub | None = None, node_id: str | None = None) -> None:
        self.hub = hub if hub is not None else MemoryHub()
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self._state = BackendState.STARTING
        self._subscribed: set[str] = set()
        self.retention = Retention()

    def start(self) -> Deferred[None]:
        self._state = BackendState.OK
        return succeed(None)

    def stop(self) -> Deferred[None]:
        for channel in list(self._subscribed):
            self.unsubscribe(channel)
        for members in self.hub.presence.values():
            for member, nodes in members.items():
                members[member] = _without(nodes, self.node_id)
        self._state = BackendState.STOPPED
        return succeed(None)

    def health(self) -> BackendHealth:
        return BackendHealth(self._state, "in-memory")

    def _refuse(self, what: str) -> Deferred[Any] | None:
        if self._state is not BackendState.STOPPED:
            return None
        return fail(BackendUnavailable(f"cannot {what}: memory backend is stopped"))

    def _refuse_now(self, what: str) -> None:
        if self._state is BackendState.STOPPED:
            raise BackendUnavailable(f"cannot {what}: memory backend is stopped")

    def publish(self, channel: str, envelope: Envelope) -> Deferred[int]:
        if self._state is not BackendState.OK:
            return fail(self._unavailable("publish"))
        return succeed(self._deliver(channel, envelope))

    def publish_now(self, channel: str, envelope: Envelope) -> int:
        if self._state is not BackendState.OK:
            raise self._unavailable("publish")
        return self._deliver(channel, envelope)

    def _unavailable(self, what: str) -> BackendUnavailable:
        return BackendUnavailable(f"cannot {what}: memory backend is {self._state.value}")

    def _deliver(self, channel: str, envelope: Envelope) -> int:
        listeners = self.hub.channels.get(channel)
        if not listeners:
            return 0
        # Copy: a callback may subscribe or unsubscribe while we iterate.
        callbacks = list(listeners.values())
        for callback in callbacks:
            callback(envelope)
        return len(callbacks)

    def subscribe(self, channel: str, callback: EnvelopeCallback) -> Deferred[None]:
        return _answered(self.subscribe_now, channel, callback)

    def subscribe_now(self, channel: str, callback: EnvelopeCallback) -> None:
        self._refuse_now("subscribe")
        self.hub.channels.setdefault(channel, {})[self.node_id] = callback
        self._subscribed.add(channel)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        self.unsubscribe_now(channel)
        return succeed(None)

    def unsubscribe_now(self, channel: str) -> None:
        listeners = self.hub.channels.get(channel)
        if listeners is not None:
            listeners.pop(self.node_id, None)
            if not listeners:
                del self.hub.channels[channel]
        self._subscribed.discard(channel)

    def presence_add(self, scope: str, member: str) -> Deferred[bool]:
        return _answered(self.presence_add_now, scope, member)

    def presence_add_now(self, scope: str, member: str) -> bool:
        self._refuse_now("add presence")
        members = self.hub.presence.setdefault(scope, {})
        nodes = members.get(member, ())
        if self.node_id not in nodes:
            members[member] = (*nodes, self.node_id)
        return not nodes

    def presence_remove(self, scope: str, member: str) -> Deferred[bool]:
        return _answered(self.presence_remove_now, scope, member)

    def presence_remove_now(self, scope: str, member: str) -> bool:
        self._refuse_now("remove presence")
        members = self.hub.presence.get(scope, {})
        nodes = members.get(member)
        if nodes is None:
            return False
        nodes = members[member] = _without(nodes, self.node_id)
        if nodes:
            return False
        del members[member]
        if not members:
            self.hub.presence.pop(scope, None)
        return True

    def presence_add_announcing(
        self, scope: str, member: str, channel: str, envelope: Envelope
    ) -> Deferred[bool]:
        return _answered(self._announcing, self.presence_add_now, scope, member, channel, envelope)

    def presence_remove_announcing(
        self, scope: str, member: str, channel: str, envelope: Envelope
    ) -> Deferred[bool]:
        return _answered(self._announcing, self.presence_remove_now, scope, member, channel, envelope)

    def _announcing(
        self, change: Callable[[str, str], bool], scope: str, member: str, channel: str, envelope: Envelope
    ) -> bool:
        changed = change(scope, member)
        if changed:
            self.publish_now(channel, envelope)
        return changed

    def presence_members(self, scope: str) -> Deferred[list[str]]:
        if (refused := self._refuse("list presence")) is not None:
            return refused
        members = self.hub.presence.get(scope, {})
        return succeed(sorted(m for m, nodes in members.items() if nodes))

    # -- history (improto.backends.memory_history) --------------------------

    def append(
        self, stream: str, channel: str, envelope: Envelope,
        idempotency_key: str | None = None, idempotency_ttl: float = 0,
    ) -> Deferred[Appended]:
        if self._state is not BackendState.OK:
            return fail(self._unavailable("append"))
        return succeed(self._append(stream, channel, envelope, idempotency_key, idempotency_ttl))

    def send_private(
        self, stream: str, envelope: Envelope, copy_stream: str | None, only_if_seen: str | None,
        idempotency_key: str | None = None, idempotency_ttl: float = 0, copy_only_elsewhere: bool = False,
    ) -> Deferred[Appended | int]:
        return _answered(self.send_private_now, stream, envelope, copy_stream, only_if_seen,
                         idempotency_key, idempotency_ttl, copy_only_elsewhere)

    def send_private_to(
        self, answer: Answer[Appended | int], stream: str, envelope: Envelope, copy_stream: str | None,
        only_if_seen: str | None, idempotency_key: str | None = None, idempotency_ttl: float = 0,
        copy_only_elsewhere: bool = False,
    ) -> None:
        try:
            result = self.send_private_now(stream, envelope, copy_stream, only_if_seen,
                                           idempotency_key, idempotency_ttl, copy_only_elsewhere)
        except BackendUnavailable:
            answer.errback(Failure())
            return
        answer.callback(result)

    def send_private_now(
        self, stream: str, envelope: Envelope, copy_stream: str | None, only_if_seen: str | None,
        idempotency_key: str | None = None, idempotency_ttl: float = 0, copy_only_elsewhere: bool = False,
    ) -> Appended | int:
        if self._state is not BackendState.OK:
            raise self._unavailable("send")
        if only_if_seen is not None and self.hub.streams.last_seen(only_if_seen) is None:
            receivers = self._deliver(stream, envelope)
            if receivers and copy_stream is not None and (
                    not copy_only_elsewhere or self._subscribed_elsewhere(copy_stream)):
                self._deliver(copy_stream, for_natives(envelope))
            return receivers
        appended = self._append(stream, stream, envelope, idempotency_key, idempotency_ttl)
        if copy_stream is not None and not appended.duplicate:
            self._append(copy_stream, copy_stream, for_natives(envelope), None, 0)
        return appended

    def _append(
        self, stream: str, channel: str, envelope: Envelope,
        idempotency_key: str | None, idempotency_ttl: float,
    ) -> Appended:
        streams = self.hub.streams
        if idempotency_key is not None:
            idempotency_key = f"{stream}\n{idempotency_key}"  # per stream, as on Redis
        original = streams.duplicate(idempotency_key)
        if original is not None:
            return original
        seq = streams.next_seq(stream)
        published = positioned(envelope, stream, seq)
        if self.retention.enabled:
            streams.store(stream, seq, published, self.retention)
        if idempotency_key is None:
            return Appended(seq, self._deliver(channel, published))
        # Reserve the key before delivering: a callback may retry at once.
        streams.remember(idempotency_key, Appended(seq, 0), idempotency_ttl)
        appended = Appended(seq, self._deliver(channel, published))
        streams.remember(idempotency_key, appended, idempotency_ttl)
        return appended

    def history(
        self, stream: str, after_seq: int, limit: int, before_seq: int | None = None
    ) -> Deferred[HistoryPage]:
        if self._state is not BackendState.OK:
            return fail(BackendUnavailable(f"cannot read history: memory backend is {self._state.value}"))
        return succeed(self.hub.streams.page(stream, after_seq, limit, before_seq, self.retention))

    def mark_seen(self, user: str, cursor: int, ttl: float) -> Deferred[None]:
        self.hub.streams.mark_seen(user, cursor, ttl)
        return succeed(None)

    def last_seen(self, user: str) -> Deferred[int | None]:
        return succeed(self.hub.streams.last_seen(user))

    def _subscribed_elsewhere(self, channel: str) -> bool:
        return any(node != self.node_id for node in self.hub.channels.get(channel) or ())

    def subscribers_now(self, channel: str) -> int:
        if self._state is not BackendState.OK:
            return 0
        return len(self.hub.channels.get(channel) or ())


def _answered(call: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """``call(*args)``'s answer as a fired Deferred (failed with what it raised)."""
    try:
        return succeed(call(*args))
    except BackendUnavailable:
        return fail()


def _without(nodes: tuple[str, ...], node_id: str) -> tuple[str, ...]:
    return nodes if node_id not in nodes else tuple(n for n in nodes if n != node_id)
