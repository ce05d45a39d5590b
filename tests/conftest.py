"""Shared fixtures. Redis and server-process fixtures live in their own modules."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture
def caplog_events() -> Iterator[list[dict[str, Any]]]:
    """Every twisted.logger event emitted during the test."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
