"""
Delivery backends: how envelopes travel between improto nodes.

:mod:`improto.backends.interface` is the contract (``IBackend``); the
in-process backend is :mod:`improto.backends.memory`, the Redis one lives in
:mod:`improto.backends.redis` (it needs the ``improto[redis]`` extra), and
:mod:`improto.backends.url` picks one from a ``--backend`` URL.
"""
