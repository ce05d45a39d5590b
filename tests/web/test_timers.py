"""improto.web.timers.BucketTimer: Autobahn's and twisted.web's timers, O(1) to cancel."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from improto.backends.memory import MemoryBackend
from improto.router import Router
from improto.settings import Settings
from improto.web.chat import ChatServerFactory
from improto.web.timers import BucketTimer
from tests import wsframes
from tests.web.test_websocket import Client


def test_a_call_runs_at_its_time_or_within_one_bucket_after_never_before() -> None:
    clock = Clock()
    timer = BucketTimer(clock, bucket_seconds=0.2)
    ran: list[Any] = []
    clock.advance(0.05)
    call = timer.call_later(1.0, lambda *a, **k: ran.append((a, k, clock.seconds())), 1, key="v")
    assert call.active() and call.getTime() == 1.05
    clock.advance(0.99)  # 1.04: not yet
    assert ran == []
    clock.advance(0.2)
    [(args, kwargs, when)] = ran
    assert (args, kwargs) == ((1,), {"key": "v"}) and 1.05 <= when <= 1.25
    assert not call.active() and len(timer) == 0


def test_cancelled_and_moved_calls() -> None:
    clock = Clock()
    timer = BucketTimer(clock)
    ran: list[str] = []
    cancelled = timer.call_later(1, ran.append, "cancelled")
    moved = timer.call_later(1, ran.append, "moved")
    cancelled.cancel()
    cancelled.cancel()  # a second cancel is nothing
    moved.reset(5)
    clock.advance(2)
    assert ran == [] and moved.active() and not cancelled.active()
    clock.advance(4)
    assert ran == ["moved"]
    moved.cancel()  # after it ran: nothing
    moved.reset(1)
    clock.advance(2)
    assert ran == ["moved"]


def test_a_call_may_cancel_another_of_its_bucket() -> None:
    clock = Clock()
    timer = BucketTimer(clock)
    ran: list[str] = []
    later: list[Any] = []
    timer.call_later(1, lambda: (ran.append("first"), later[0].cancel()))
    later.append(timer.call_later(1, ran.append, "second"))
    clock.advance(1.2)
    assert ran == ["first"]


def test_a_full_bucket_runs_a_chunk_per_reactor_turn() -> None:
    clock = Clock()
    timer = BucketTimer(clock, chunk_size=1000)
    ran: list[Any] = []
    # Other work the reactor has to do meanwhile gets its turn between chunks.
    timer.call_later(1, lambda: clock.callLater(0, ran.append, "other work"))
    for i in range(2499):
        timer.call_later(1, ran.append, i)
    clock.advance(1.2)
    assert ran == list(range(999)) + ["other work"] + list(range(999, 2499))


def test_arming_and_cancelling_many_leaves_nothing_but_one_reactor_call_per_bucket() -> None:
    clock = Clock()
    timer = BucketTimer(clock)
    for _ in range(20_000):
        timer.call_later(30, print).cancel()
    assert len(timer) == 0
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(31)
    assert clock.getDelayedCalls() == []


def test_a_failing_call_is_logged_and_the_others_still_run(caplog_events) -> None:
    clock = Clock()
    timer = BucketTimer(clock)
    ran: list[str] = []
    timer.call_later(1, lambda: 1 / 0)
    timer.call_later(1, ran.append, "still")
    clock.advance(1.2)
    assert ran == ["still"]
    failures = [e for e in caplog_events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["log_failure"].check(ZeroDivisionError)


def test_autobahns_auto_ping_runs_on_the_factorys_bucket_timer() -> None:
    reactor = MemoryReactorClock()
    backend = MemoryBackend()
    backend.start()
    factory = ChatServerFactory(Router(backend), Settings(ping_interval=10), reactor)
    assert isinstance(factory._batched_timer, BucketTimer)
    client = Client(factory, "/ws/alice")
    assert client.response.startswith(b"HTTP/1.1 101")
    client.raw()
    reactor.advance(10.3)
    assert [op for op, _, _ in wsframes.parse_frames(client.raw())] == [9]  # a ping
