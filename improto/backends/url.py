"""Choose a backend from a URL: ``memory://`` or ``redis://host:port/db``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from improto.backends.interface import IBackend
from improto.backends.memory import MemoryBackend

SCHEMES = ("memory", "redis")


def check_backend_url(url: str) -> str:
    """Return the scheme of a usable URL, or raise ValueError in one line."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported backend URL {url!r}: expected memory:// or redis://HOST:PORT/DB"
        )
    if scheme == "redis":
        from improto.backends.redis.backend import parse_redis_url

        parse_redis_url(url)
    return scheme


def backend_from_url(url: str, reactor: Any, **options: Any) -> IBackend:
    scheme = check_backend_url(url)
    if scheme == "memory":
        return MemoryBackend()
    from improto.backends.redis.backend import RedisBackend

    return RedisBackend.from_url(url, reactor=reactor, **options)
