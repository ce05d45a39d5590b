"""
Counting what one client holds, so one address (or one nickname) cannot
take every socket, and remembering what was already logged, so a flood of
refusals is one log line, not one per attempt.

Both are plain bookkeeping with no I/O: the web layer decides when a
connection starts and ends and what a refusal looks like.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ConnectionCounter:
    """
    How many connections each key (a peer address, a nickname) holds now,
    against one limit. ``acquire`` when a connection is admitted, and
    ``release`` exactly once for each successful ``acquire`` on every close
    path; keys that drop to zero are forgotten, so the table is as big as
    the set of keys with a live connection, never more.

    ``limit`` 0 means unlimited (everything is still counted).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("a connection limit must not be negative")
        self.limit = limit
        self._counts: dict[Hashable, int] = {}

    def acquire(self, key: Hashable) -> bool:
        """Count one more connection for ``key``; False (and no count) if full."""
        count = self._counts.get(key, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: Hashable) -> None:
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = count - 1

    def count(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        """The number of keys holding at least one connection."""
        return len(self._counts)


class OncePerKey:
    """
    Remembers the last ``size`` keys seen, so that a refusal is logged once
    per key (an origin, an address) instead of once per attempt. The bound
    keeps an attacker who varies the key from growing it without limit; a
    key forgotten that way may be logged again, which is the right trade.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def first(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen (since it was last forgotten)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


def peer_host(transport: object) -> str:
    """The peer's address without its port: the key of the per-address limits."""
    get_peer = getattr(transport, "getPeer", None)
    peer = get_peer() if get_peer is not None else None
    host = getattr(peer, "host", None)
    return str(host) if host is not None else str(peer)


def http_response(
    status: int, phrase: str, body: str, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """
    A complete ``Connection: close`` HTTP/1.1 response with a short text
    body, for refusals written straight to a transport (before twisted.web
    or after Autobahn took the connection).
    """
    data = (body.rstrip("\n") + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(data)}",
        "Connection: close",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
