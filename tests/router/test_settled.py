"""improto.router.settled: the direct path for fired Deferreds, Twisted's otherwise."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, FirstError, fail, succeed
from twisted.python.failure import Failure

from improto.backends.memory import MemoryBackend, MemoryHub
from improto.protocol import codec
from improto.router import Router
from improto.router.settled import PENDING, done, gather, result_of, then
from tests.fakes import FakeClock, FakeLink


def outcome(d: Deferred) -> list:
    seen: list = []
    d.addBoth(seen.append)
    return seen


class TestResultOf:
    def test_a_success_is_read_without_consuming_it(self):
        d = succeed(7)
        assert result_of(d) == 7
        assert outcome(d) == [7]

    def test_unfired_failed_and_paused_are_pending(self):
        failed = fail(ValueError("x"))
        assert result_of(failed) is PENDING
        failed.addErrback(lambda f: None)
        assert result_of(Deferred()) is PENDING
        waiting: Deferred = Deferred()
        chained = succeed(1)
        chained.addCallback(lambda _: waiting)
        assert result_of(chained) is PENDING
        waiting.callback(2)
        assert result_of(chained) == 2

    def test_done(self):
        assert done(succeed(None))
        assert not done(Deferred())


class TestGather:
    def test_fired_successes_give_their_results_at_once(self):
        assert outcome(gather([succeed(1), succeed(2)])) == [[1, 2]]
        assert outcome(gather([])) == [[]]

    def test_an_unfired_one_waits_as_gatherResults_does(self):
        later: Deferred = Deferred()
        seen = outcome(gather([succeed(1), later]))
        assert seen == []
        later.callback(2)
        assert seen == [[1, 2]]

    def test_a_failure_fails_it_as_gatherResults_does(self):
        seen = outcome(gather([succeed(1), fail(ValueError("no"))], consume_errors=True))
        [failure] = seen
        assert isinstance(failure, Failure) and failure.check(FirstError)

    @pytest.mark.parametrize("consume", [True, False])
    @pytest.mark.parametrize("fires", ["success", "failure"])
    def test_one_left_to_wait_for_answers_as_gatherResults_does(self, consume, fires):
        """The one-pending path (no DeferredList) against Twisted's own gatherResults."""
        from twisted.internet.defer import gatherResults

        answers = []
        for use_ours in (True, False):
            later: Deferred = Deferred()
            waits = [succeed(1), None, later]
            if use_ours:
                gathered = gather(waits, consume_errors=consume)
            else:
                gathered = gatherResults([succeed(None) if d is None else d for d in waits],
                                         consumeErrors=consume)
            seen = outcome(gathered)
            assert seen == []
            if fires == "success":
                later.callback(3)
            else:
                later.errback(ValueError("no"))
            member = outcome(later)
            [result] = seen
            if isinstance(result, Failure):
                assert result.check(FirstError) and result.value.index == 2
                result = ("FirstError", result.value.subFailure.type)
            [after] = member
            if isinstance(after, Failure):
                after = after.type
            answers.append((result, after))
        assert answers[0] == answers[1]
        if fires == "success":
            assert answers[0] == ([1, None, 3], 3)


class TestThen:
    def test_runs_now_and_does_not_chain_a_returned_deferred(self):
        inner: Deferred = Deferred()
        assert then(succeed(1), lambda r: inner) is inner
        assert outcome(then(succeed(1), lambda r, k: r + k, 2)) == [3]

    def test_an_exception_becomes_a_failed_deferred(self):
        def boom(_):
            raise ValueError("boom")

        [failure] = outcome(then(succeed(1), boom))
        assert failure.check(ValueError)

    def test_unfired_is_addCallback(self):
        later: Deferred = Deferred()
        seen = outcome(then(later, lambda r: r * 2))
        assert seen == []
        later.callback(4)
        assert seen == [8]


class TestPresenceEncodesOnlyWhatItAnnounces:
    def test_a_user_present_on_another_node_costs_no_presence_frame(self, monkeypatch):
        hub = MemoryHub()
        routers = []
        for node in ("a", "b"):
            backend = MemoryBackend(hub, node_id=node)
            backend.start()
            routers.append(Router(backend, clock=FakeClock()))
        routers[0].connect(FakeLink(), "alice", native=True)
        encoded: list = []
        real = codec.presence
        monkeypatch.setattr(codec, "presence", lambda *a: encoded.append(a) or real(*a))
        # First here, but not first anywhere: nothing to announce, nothing to encode.
        routers[1].disconnect(routers[1].connect(FakeLink(), "alice", native=True))
        assert encoded == []

    @pytest.mark.parametrize("native", [True, False])
    def test_arrivals_and_departures_are_still_announced(self, native):
        backend = MemoryBackend()
        backend.start()
        router = Router(backend, clock=FakeClock())
        watcher = FakeLink()
        router.connect(watcher, "watcher", native=True)
        watcher.take()
        session = router.connect(FakeLink(), "alice", native=native)
        router.disconnect(session)
        events = [(f["event"], f.get("group")) for f in watcher.take() if f["type"] == "presence"]
        assert events == [("online", None), ("join", "lobby"), ("leave", "lobby"), ("offline", None)]
