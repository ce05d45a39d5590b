"""
Choose a backend from a URL: ``memory://``, ``redis://host:port/db``,
``redis-cluster://host:port,host:port/`` (Redis Cluster, sharded pub/sub)
or ``redis-sentinel://host:port,host:port/MASTERNAME/DB`` (the master
that Redis Sentinel names, followed across failovers).

The Redis backend is imported only for a ``redis://`` URL, so the core
runs without the ``improto[redis]`` extra; without it a ``redis://`` URL
is a one-line ``ValueError`` that says how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from improto.backends.interface import IBackend
from improto.backends.memory import MemoryBackend

SCHEMES = ("memory", "redis", "redis-cluster", "redis-sentinel")


def _redis(module: str) -> ModuleType:
    """``improto.backends.redis.<module>``, or a one-line ValueError without the extra."""
    try:
        return importlib.import_module(f"improto.backends.redis.{module}")
    except ModuleNotFoundError as e:
        if e.name != "hiredis":
            raise
        raise ValueError(str(e)) from None


def check_backend_url(url: str) -> str:
    """Return the scheme of a usable URL, or raise ValueError in one line."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported backend URL {url!r}: expected memory://, redis://HOST:PORT/DB, "
            "redis-cluster://HOST:PORT,HOST:PORT/ or redis-sentinel://HOST:PORT,HOST:PORT/MASTER/DB"
        )
    if scheme == "redis":
        _redis("options").parse_redis_url(url)
    elif scheme == "redis-cluster":
        _redis("options").configure_cluster(url)
    elif scheme == "redis-sentinel":
        _redis("options").configure_sentinel(url)
    return scheme


def backend_from_url(url: str, reactor: Any, **options: Any) -> IBackend:
    scheme = check_backend_url(url)
    if scheme == "memory":
        return MemoryBackend()
    if scheme == "redis-cluster":
        cluster: IBackend = _redis("cluster").ClusterBackend.from_url(url, reactor=reactor, **options)
        return cluster
    if scheme == "redis-sentinel":
        sentinel: IBackend = _redis("sentinel").SentinelBackend.from_url(url, reactor=reactor, **options)
        return sentinel
    backend: IBackend = _redis("backend").RedisBackend.from_url(url, reactor=reactor, **options)
    return backend
