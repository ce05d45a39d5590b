"""
The full soak runs only under ``tox -e soak`` (``IMPROTO_SOAK=1``): it
takes minutes. In the normal suite its tests are deselected, not skipped
(a skip fails the suite under tox), and only the smoke test runs.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: minutes of load; run with tox -e soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("IMPROTO_SOAK"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
