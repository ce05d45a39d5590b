"""Router tests that run on both ways of calling a backend."""

from __future__ import annotations

from typing import Any

import pytest

from improto.router import durable, inbound


@pytest.fixture(params=["immediate", "deferred"])
def backend_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    ``immediate``: the memory backend as it is, answering the router's
    per-message calls at once (``IImmediateBackend``); ``deferred``: the
    router sees it as a plain ``IBackend`` and waits on Deferreds, as it
    does on Redis. Use with ``pytestmark = pytest.mark.usefixtures("backend_calls")``.
    """
    if request.param == "deferred":
        def not_immediate(backend: Any, default: Any = None) -> Any:
            return default

        for module in (inbound, durable):
            monkeypatch.setattr(module, "IImmediateBackend", not_immediate)
    return str(request.param)
