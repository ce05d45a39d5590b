"""Shared fixtures; the Redis and server-process ones live in their own modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from improto.testing import captured_events
from tests.redis_cluster_fixture import (  # noqa: F401  (fixtures for every module)
    fresh_redis_cluster,
    redis_cluster,
    redis_sentinel,
)
from tests.redis_fixture import (  # noqa: F401  (fixtures for every module)
    private_redis,
    redis_prefix,
    redis_server,
    redis_url,
)
from tests.serverproc import server  # noqa: F401  (a fixture for every module)


@pytest.fixture
def caplog_events() -> Iterator[list[dict[str, Any]]]:
    """Every twisted.logger event emitted during the test."""
    with captured_events() as events:
        yield events


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under tox (and so in CI) a skipped test is a failure: the Redis,
    browser and packaging tests must really run, never quietly not."""
    if not os.environ.get("IMPROTO_NO_SKIPS") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        names = ", ".join(report.nodeid for report in skipped[:5])
        print(f"\nFAIL: {len(skipped)} tests were skipped, and none may be: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
