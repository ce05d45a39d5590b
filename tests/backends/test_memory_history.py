"""The memory backend's history stays bounded even for streams nobody touches again."""

from __future__ import annotations

from improto.backends.interface import Appended, Envelope, Retention
from improto.backends.memory_history import _SWEEP_EVERY, MemoryStreams
from improto.testing import FakeClock


def test_idle_streams_idempotency_keys_and_cursors_are_swept() -> None:
    clock = FakeClock()
    streams = MemoryStreams(clock=clock)
    retention = Retention(size=10, age=60)
    seq = streams.next_seq("group:idle")
    streams.store("group:idle", seq, Envelope("n", "s", b"x", stream="group:idle", seq=seq), retention)
    streams.remember("k", Appended(seq, 1), 30)
    streams.mark_seen("bob", 1, 30)
    clock.advance(61)
    for _ in range(_SWEEP_EVERY):
        streams.mark_seen("alice", 0, 1000)
    assert not streams.streams["group:idle"].entries
    assert streams.streams["group:idle"].last_seq == 1  # seqs go on where they were
    assert "k" not in streams.idempotency and "bob" not in streams.seen
