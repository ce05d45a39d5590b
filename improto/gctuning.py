"""
The garbage collector's settings in a ``twistd improto`` process.

A server keeps many objects alive for a while: every connection's
protocol, and on the Redis backend every message that waits for Redis to
answer (its Deferreds, closures and envelope). With CPython's default
first-generation threshold (700 allocations) a collection then runs every
few dozen messages, each promotes the waiting objects to an older
generation, and the older generations' collections walk everything the
process holds. On the private-message benchmark with the Redis backend
(``benchmarks/``) the collector took about 40% of the server's CPU with
the defaults and under 5% with a threshold of 20,000: about 110 -> 85 us of
server CPU per message.

:func:`tune` also calls :func:`gc.freeze` once the server runs: what
start-up left behind (modules, classes, functions: tens of thousands of
objects) is never walked again. Reference counting still frees almost
everything at once; only cyclic garbage waits longer, for at most
``threshold`` more allocations, so memory use barely changes. Only
``twistd improto`` calls it: a program that embeds the router keeps its
own settings.
"""

from __future__ import annotations

import gc

from twisted.logger import Logger

_log = Logger()

#: ``--gc-threshold``: allocations between first-generation collections.
DEFAULT_THRESHOLD = 20_000


def tune(threshold: int) -> None:
    """Freeze what start-up allocated and raise the first threshold (0: leave both)."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    _log.info(
        "Garbage collector: first-generation threshold {threshold}, {frozen} start-up "
        "objects frozen (--gc-threshold)",
        threshold=threshold, frozen=gc.get_freeze_count(),
    )
