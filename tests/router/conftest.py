"""Router tests that run on each way of calling a backend."""

from __future__ import annotations

from typing import Any

import pytest

from improto.router import durable, inbound, presence, router, subscriptions


@pytest.fixture(params=["immediate", "deferred", "in-steps"])
def backend_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    ``immediate``: the memory backend as it is, answering the router's
    per-message calls at once (``IImmediateBackend``); ``deferred``: the
    router waits on Deferreds, as it does on Redis; ``in-steps``: the router
    sees a plain ``IBackend`` (no ``IPrivateBackend``, no ``IAnnouncingPresence``), as on Redis Cluster. Use with ``pytestmark = pytest.mark.usefixtures("backend_calls")``.
    """
    def not_provided(backend: Any, default: Any = None) -> Any:
        return default

    if request.param in ("deferred", "in-steps"):
        for module in (inbound, durable, presence, router, subscriptions):
            monkeypatch.setattr(module, "IImmediateBackend", not_provided)
    if request.param == "in-steps":
        monkeypatch.setattr(durable, "IPrivateBackend", not_provided)
        monkeypatch.setattr(presence, "IAnnouncingPresence", not_provided)
    return str(request.param)
