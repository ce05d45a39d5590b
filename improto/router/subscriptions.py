"""Reference-counted backend subscriptions: one per channel per node."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import (
    BackendUnavailable,
    EnvelopeCallback,
    IBackend,
    IImmediateBackend,
)
from improto.router.settled import done

_log = Logger()


class Subscriptions:
    """
    Many local sessions may want one channel; the backend sees one
    subscription, made by the first :meth:`hold` and dropped by the last
    :meth:`release`. :meth:`hold` fires once the subscription is active,
    so a caller can wait before telling a client it is connected; it
    returns None when it is active already (on a backend that answers at
    once, :class:`IImmediateBackend`, always), which costs no Deferred.
    """

    def __init__(self, backend: IBackend) -> None:
        self._backend = backend
        self._now: IImmediateBackend | None = IImmediateBackend(backend, None)
        self._refs: dict[str, int] = {}
        #: Channels whose subscribe is in flight, with who waits for it.
        self._pending: dict[str, list[Deferred[None]]] = {}

    def __contains__(self, channel: str) -> bool:
        return channel in self._refs

    def __len__(self) -> int:
        """Channels subscribed (or being subscribed) for local sessions."""
        return len(self._refs)

    def hold(self, channel: str, callback: EnvelopeCallback) -> Deferred[None] | None:
        refs = self._refs.get(channel, 0)
        self._refs[channel] = refs + 1
        if refs == 0:
            if self._now is not None:
                try:
                    self._now.subscribe_now(channel, callback)
                except BackendUnavailable:
                    pass  # a stopped backend: nobody waits for that, as below
                return None
            subscribed = self._backend.subscribe(channel, callback)
            if done(subscribed):
                return None
            self._pending[channel] = []
            subscribed.addBoth(self._settled, channel)
        waiters = self._pending.get(channel)
        if waiters is None:
            return None
        waiter: Deferred[None] = Deferred()
        waiters.append(waiter)
        return waiter

    def _settled(self, result: object, channel: str) -> None:
        if isinstance(result, Failure) and not result.check(BackendUnavailable):
            _log.failure("Subscribing {channel} failed", result, channel=channel)
        # A BackendUnavailable subscription is made on reconnect (see
        # IBackend.subscribe); nobody should wait for that.
        for waiter in self._pending.pop(channel, []):
            waiter.callback(None)

    def release(self, channel: str) -> None:
        refs = self._refs.get(channel, 0) - 1
        if refs > 0:
            self._refs[channel] = refs
            return
        self._refs.pop(channel, None)
        if self._now is not None:
            self._now.unsubscribe_now(channel)
            return
        unsubscribed = self._backend.unsubscribe(channel)
        if not done(unsubscribed):
            unsubscribed.addErrback(lambda failure: failure.trap(BackendUnavailable))
