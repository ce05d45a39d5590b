"""
The Redis backend: several improto nodes sharing one Redis act as one server.

``backend`` is the :class:`~improto.backends.interface.IBackend`;
``client`` the small Twisted-native RESP connection it runs on; ``wire``
the envelope encoding; ``presence`` the Lua scripts behind presence.
"""

from improto.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
