"""
The Redis backend: several improto nodes sharing one Redis act as one server.

``backend`` is the :class:`~improto.backends.interface.IBackend` and its
life cycle; ``options`` the URL, tunables and start-up probe;
``connection`` the reconnecting links (Twisted's ``ClientService``);
``client`` the RESP connection they run on (hiredis packs and parses);
``subscriptions`` and ``presence`` this node's channels and members;
``wire`` the envelope encoding. ``cluster`` (with ``slots``, ``shards``
and ``sharded``) is the Redis Cluster backend, ``sentinel`` the Redis
Sentinel one.

It needs the ``improto[redis]`` extra (hiredis); importing this package
without it fails with a one-line ``ModuleNotFoundError`` that says so.
"""

MISSING_EXTRA = "the Redis backend needs: pip install 'improto[redis]'"

try:
    import hiredis  # noqa: F401
except ModuleNotFoundError as e:
    raise ModuleNotFoundError(MISSING_EXTRA, name=e.name) from None

from improto.backends.redis.backend import RedisBackend  # noqa: E402  (after the check above)

__all__ = ["RedisBackend"]
