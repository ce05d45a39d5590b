"""
Waiting on Deferreds that have already fired, without the machinery.

The in-memory backend answers every call with an already-fired Deferred,
and one connection's handshake and close wait on about twenty of them
(subscriptions, presence, the lobby). ``gatherResults`` on fired
Deferreds, or a callback that returns another fired Deferred (which
chains), costs more than the work waited for: a ``DeferredList`` per
call, a callback pair per member (``benchmarks/micro.py --instructions
--ops site-handshake``). These helpers take the direct path when the
answer is already there, and are exactly Twisted's otherwise (not fired
yet, or failed: errors travel as before).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.python.failure import Failure

T = TypeVar("T")

#: What :func:`result_of` returns for a Deferred without a success result yet.
PENDING: Any = object()


def result_of(d: Deferred[Any]) -> Any:
    """
    ``d``'s success result if it has fired with one and nothing is chained
    on it, else :data:`PENDING`. Reading it adds no callback: ``d`` stays as
    it is (a failure is left for whoever handles it).
    """
    if d.called and not d.paused:
        # Not paused: nothing is chained, so the result is no Deferred.
        result = d.result
        if not isinstance(result, Failure):
            return result
    return PENDING


def gather(
    waits: Sequence[Deferred[Any] | None], consume_errors: bool = False
) -> Deferred[list[Any]]:
    """
    ``gatherResults(waits, consumeErrors=consume_errors)``: a fired Deferred
    of the results at once when every one of ``waits`` has succeeded already.
    A None in ``waits`` is work done already (its result: None).
    """
    results = [None if d is None else result_of(d) for d in waits]
    pending = [i for i, result in enumerate(results) if result is PENDING]
    if not pending:
        return succeed(results)
    if len(pending) == 1:
        return _gather_one(results, pending[0], waits[pending[0]], consume_errors)  # type: ignore[arg-type]
    return gatherResults([succeed(None) if d is None else d for d in waits],
                         consumeErrors=consume_errors)


def _gather_one(
    results: list[Any], index: int, waiting: Deferred[Any], consume_errors: bool
) -> Deferred[list[Any]]:
    """
    What ``gatherResults`` answers when all but ``waiting`` (at ``index``)
    have succeeded already, without its ``DeferredList``: the results once
    ``waiting`` succeeds, or a ``FirstError`` of its failure; ``waiting``
    goes on with its own result (None for a failure if ``consume_errors``).
    On the Redis backend a connection's set-up waits like this on its own
    channel's subscription (the lobby's is there already).
    """
    gathered: Deferred[list[Any]] = Deferred()

    def succeeded(result: Any) -> Any:
        results[index] = result
        gathered.callback(results)
        return result

    def failed(failure: Failure) -> Failure | None:
        gathered.errback(Failure(FirstError(failure, index)))
        return None if consume_errors else failure

    waiting.addCallbacks(succeeded, failed)
    return gathered


def settled(waits: Sequence[Deferred[Any] | None]) -> bool:
    """Whether every one of ``waits`` is None or has succeeded already."""
    return all(d is None or result_of(d) is not PENDING for d in waits)


def then(d: Deferred[Any], fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    ``d.addCallback(fn, *args)``, but when ``d`` has succeeded already ``fn``
    runs now and a Deferred it returns is returned as it is (not chained).
    """
    result = result_of(d)
    if result is PENDING:
        return d.addCallback(fn, *args)
    try:
        out = fn(result, *args)
    except BaseException:
        return fail()
    # (None first: isinstance of an ABC-registered class is not free.)
    return succeed(out) if out is None or not isinstance(out, Deferred) else out


def done(d: Deferred[Any]) -> bool:
    """Whether ``d`` has succeeded already (nothing left to wait for or handle)."""
    return result_of(d) is not PENDING
