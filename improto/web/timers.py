"""
Per-connection timeouts, cheap to arm and to cancel.

Every connection arms timers that almost never fire: the HTTP idle timeout
and request deadline (:mod:`improto.web.site`), Autobahn's opening
handshake timeout, its auto-ping and ping timeout. Each is armed and
cancelled once per connection or per ping, and together they were about an
eighth of a connection's set-up (``benchmarks/micro.py --instructions --ops
site-handshake``, 750.8k instructions with them, 662.9k with all three
options at 0).

Autobahn arms its own through the factory's ``_batched_timer``, txaio's
``_BatchedTimer``: a closure and a call object per timer, and a cancel that
removes the call from its bucket's list with ``list.remove``, O(n) in the
timers due in the same bucket; thousands of connections opened within a
second share one auto-ping bucket, so closing them all is quadratic.
Twisted's ``callLater`` makes a ``DelayedCall`` on the reactor's heap per
timer.

:class:`BucketTimer` keeps both contracts for these uses: calls due in one
bucket of time (0.2 s, as Autobahn's) share one reactor ``DelayedCall``
and run together, a thousand per reactor turn; each bucket is a dict, so
arming, cancelling and moving a call (``reset``) are O(1). A call runs
at its time or up to one bucket later, never earlier (txaio's can run up
to a second early: it rounds the due time down to a whole second).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

_log = Logger()


class TimerCall:
    """One armed call: :meth:`cancel`, :meth:`reset` and :meth:`active`, as a ``DelayedCall``'s."""

    __slots__ = ("_timer", "_bucket", "_fn", "_args", "_kwargs", "time")

    def __init__(self, timer: BucketTimer, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self._timer = timer
        self._bucket: _Bucket | None = None
        self._fn, self._args, self._kwargs = fn, args, kwargs
        #: When it is due (the clock's seconds).
        self.time = 0.0

    def active(self) -> bool:
        return self._bucket is not None

    def cancel(self) -> None:
        """Stop it from running; nothing happens if it has run or was cancelled."""
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            bucket.remove(self)

    def reset(self, seconds: float) -> None:
        """Make it due ``seconds`` from now instead (if it is still armed)."""
        if self._bucket is not None:
            self.cancel()
            self._timer.arm(self, seconds)

    def getTime(self) -> float:  # noqa: N802 - DelayedCall's name
        return self.time

    def run(self) -> None:
        self._bucket = None
        try:
            self._fn(*self._args, **self._kwargs)
        except Exception:
            _log.failure("A timed call failed: {fn!r}", fn=self._fn)


class _Bucket:
    """The calls due in one bucket of time, and the reactor call that runs them."""

    __slots__ = ("timer", "index", "calls")

    def __init__(self, timer: BucketTimer, index: int) -> None:
        self.timer, self.index = timer, index
        self.calls: dict[TimerCall, None] = {}

    def remove(self, call: TimerCall) -> None:
        # An emptied bucket stays until it is due: most calls are armed and
        # cancelled at once (a handshake), and the next one would make the
        # reactor call again. There is at most one per bucket width ahead.
        del self.calls[call]

    def due(self) -> None:
        self.timer.drop(self)
        if self.calls:
            self.timer.run_some(list(self.calls), self)


class BucketTimer:
    """
    ``call_later(delay, fn, *args, **kwargs)`` in buckets of ``bucket_seconds``
    on ``clock`` (a reactor): Autobahn's ``_batched_timer`` and twisted.web's
    ``callLater`` for the uses above.
    """

    def __init__(self, clock: Any, bucket_seconds: float = 0.2, chunk_size: int = 1000) -> None:
        self._clock = clock
        self._width = bucket_seconds
        self._chunk = chunk_size
        self._buckets: dict[int, _Bucket] = {}

    def __len__(self) -> int:
        """Calls armed and not run yet."""
        return sum(len(b.calls) for b in self._buckets.values())

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TimerCall:
        call = TimerCall(self, fn, args, kwargs)
        self.arm(call, delay)
        return call

    #: twisted.web's name (``HTTPChannel.callLater``, ``TimeoutMixin``).
    callLater = call_later

    def arm(self, call: TimerCall, delay: float) -> None:
        call.time = self._clock.seconds() + max(0.0, delay)
        index = math.ceil(call.time / self._width)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket(self, index)
            self._clock.callLater(max(0.0, index * self._width - self._clock.seconds()), bucket.due)
        bucket.calls[call] = None
        call._bucket = bucket

    def drop(self, bucket: _Bucket) -> None:
        """Forget a due bucket."""
        if self._buckets.get(bucket.index) is bucket:
            del self._buckets[bucket.index]

    def run_some(self, calls: list[TimerCall], bucket: _Bucket) -> None:
        """Run up to a chunk of a due bucket's calls now, the rest on later reactor turns."""
        for call in calls[: self._chunk]:
            if call._bucket is bucket:  # not cancelled or moved meanwhile
                del bucket.calls[call]
                call.run()
        rest = calls[self._chunk:]
        if rest:
            self._clock.callLater(0, self.run_some, rest, bucket)
