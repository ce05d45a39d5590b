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

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
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
    for result in results:
        if result is PENDING:
            return gatherResults([succeed(None) if d is None else d for d in waits],
                                 consumeErrors=consume_errors)
    return succeed(results)


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
