"""``--metrics``: off by default, ``main``, or an endpoint checked before start-up."""

from __future__ import annotations

import pytest

from improto.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_metrics_are_off_by_default_and_the_help_says_where_they_go() -> None:
    assert parse()["metrics"] is None
    assert "--metrics=" in str(Options())
    described = next(p[3] for p in Options.optParameters if p[0] == "metrics")
    assert "'main'" in described and "Default: off" in described


def test_main_and_an_endpoint_are_accepted() -> None:
    assert parse("--metrics", "main")["metrics"] == "main"
    assert parse("--metrics", "tcp:9100:interface=127.0.0.1")["metrics"] == "tcp:9100:interface=127.0.0.1"


def test_a_bad_endpoint_is_one_line_at_start_up() -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--metrics", "nonsense:9100")
    assert str(exited.value).startswith("twistd improto: bad --metrics 'nonsense:9100'")
