"""
History, idempotency keys and last-seen cursors for the memory backend.

One :class:`MemoryStreams` lives on a :class:`~improto.backends.memory.MemoryHub`
and is shared by every node on it, like the Redis keys are. Memory is
bounded: each stream is a ring (``deque(maxlen=size)``) whose entries also
expire after ``age`` seconds; idempotency keys and cursors expire with
their ttl and are swept as they are met (and all at once every few
thousand writes), so nothing grows without bound.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import attrs

from improto.backends.interface import Appended, Envelope, HistoryPage, Retention

#: Sweep expired keys every this many writes.
_SWEEP_EVERY = 4096


@attrs.define
class _Stream:
    last_seq: int = 0
    #: ``(seq, envelope, stored_at)``, oldest first.
    entries: collections.deque[tuple[int, Envelope, float]] = attrs.field(factory=collections.deque)


@attrs.define
class MemoryStreams:
    clock: Callable[[], float] = time.monotonic
    streams: dict[str, _Stream] = attrs.field(factory=dict)
    #: key -> (result, expires_at)
    idempotency: dict[str, tuple[Appended, float]] = attrs.field(factory=dict)
    #: user -> (cursor, expires_at)
    seen: dict[str, tuple[int, float]] = attrs.field(factory=dict)
    _writes: int = 0
    #: The age of the last store, for the sweep of idle streams.
    _age: float = Retention().age

    def sizes(self) -> dict[str, int]:
        """What history holds now (read by the metrics at scrape time)."""
        return {
            "streams": len(self.streams),
            "messages": sum(len(state.entries) for state in self.streams.values()),
            "inbox_users": len(self.seen),
        }

    def duplicate(self, key: str | None) -> Appended | None:
        if key is None:
            return None
        found = self.idempotency.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self.idempotency[key]
            return None
        return attrs.evolve(found[0], duplicate=True)

    def next_seq(self, stream: str) -> int:
        state = self.streams.setdefault(stream, _Stream())
        state.last_seq += 1
        return state.last_seq

    def store(self, stream: str, seq: int, envelope: Envelope, retention: Retention) -> None:
        state = self.streams[stream]
        if state.entries.maxlen != retention.size:
            state.entries = collections.deque(state.entries, maxlen=retention.size)
        now = self.clock()
        state.entries.append((seq, envelope, now))
        self._age = retention.age
        self._trim(state, retention, now)
        self._tick()

    def remember(self, key: str | None, result: Appended, ttl: float) -> None:
        if key is not None and ttl > 0:
            self.idempotency[key] = (result, self.clock() + ttl)
            self._tick()

    def page(
        self, stream: str, after: int, limit: int, before: int | None, retention: Retention
    ) -> HistoryPage:
        state = self.streams.get(stream)
        if state is None:
            return HistoryPage([], 1, 0)
        self._trim(state, retention, self.clock())
        if before is None:
            chosen = [e for s, e, _ in state.entries if s > after][:limit]
        else:
            below = [e for s, e, _ in state.entries if after < s < before]
            chosen = below[-limit:] if limit > 0 else []
        first = state.entries[0][0] if state.entries else state.last_seq + 1
        return HistoryPage(chosen, first, state.last_seq)

    def mark_seen(self, user: str, cursor: int, ttl: float) -> None:
        old = self.last_seen(user) or 0
        self.seen[user] = (max(old, cursor), self.clock() + ttl)
        self._tick()

    def last_seen(self, user: str) -> int | None:
        found = self.seen.get(user)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self.seen[user]
            return None
        return found[0]

    @staticmethod
    def _trim(state: _Stream, retention: Retention, now: float) -> None:
        cutoff = now - retention.age
        while state.entries and state.entries[0][2] <= cutoff:
            state.entries.popleft()

    def _tick(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY:
            return
        now = self.clock()
        for table in (self.idempotency, self.seen):
            for key in [k for k, (_, expires) in table.items() if expires <= now]:
                del table[key]
        # Idle streams keep their last seq (a few bytes) but drop expired entries.
        for state in self.streams.values():
            if state.entries and state.entries[0][2] <= now - self._age:
                self._trim(state, Retention(size=1, age=self._age), now)
