"""A token bucket: a steady rate with room for short bursts."""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    rate: float
    burst: float
    tokens: float = attrs.field(default=None)
    stamp: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Spend one token if there is one; ``now`` is any monotonic clock."""
        if self.rate <= 0:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
