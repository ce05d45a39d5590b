"""
When to reconnect, sans IO: exponential backoff with jitter, capped, and
which closes are final.

Jitter keeps a crowd of clients that lost the same server from coming back
in lockstep; the cap keeps a client that was away a long time from waiting
minutes once the server is back. "Equal jitter": the delay is at least
half the exponential step, so a retry is never immediate.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

#: Close codes after which retrying cannot help: authentication refused
#: (the server's token mode), forbidden, or a nickname the server refuses.
FINAL_CLOSE_CODES = {
    4401: "not authenticated",
    4403: "forbidden",
    1008: "refused by policy (e.g. a bad nickname)",
}
#: HTTP answers to the opening handshake that are just as final.
FINAL_HTTP_STATUSES = {400, 401, 403, 404}


@attrs.define
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    #: A number in [0, 1); injectable so tests are deterministic.
    random: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call backs off further."""
        step = min(self.cap, self.base * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return step / 2 + self.random() * step / 2

    def reset(self) -> None:
        """A connection got as far as the welcome: start from ``base`` again."""
        self.attempt = 0


def is_final_close(code: int | None) -> bool:
    return code in FINAL_CLOSE_CODES
