"""Scraping a real ``/metrics`` endpoint, parsed by prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests import rawhttp

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TIMEOUT = 5.0


def scrape(port: int, path: str = "/metrics") -> Samples:
    response = rawhttp.get(port, path)
    response.close()
    assert response.status == 200, response.body[:200]
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a sample that is not exported is an error, not 0."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exported; have {sorted(k[0] for k in samples)}"
    return samples[key]


def wait_for(port: int, check: Callable[[Samples], bool], timeout: float = TIMEOUT) -> Samples:
    """Scrape until ``check`` holds (counters follow the traffic, not instantly)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"the metrics never matched; last scrape: {samples}")
        time.sleep(0.05)
