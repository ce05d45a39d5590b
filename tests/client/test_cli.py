"""The command line: the URL, the token in both transports, and --help without a terminal."""

from __future__ import annotations

import os
import subprocess

import pytest

from improto.client.cli import connection_target, main, nickname_of, parser
from tests.client.chat_program import chat_command


def test_without_a_token_only_the_native_subprotocol_is_offered() -> None:
    assert connection_target("ws://h:1/ws/alice", None) == ("ws://h:1/ws/alice", ["improto.v1"])


def test_the_token_goes_as_query_parameter_and_subprotocol() -> None:
    url, protocols = connection_target("ws://h:1/ws/alice?x=1&token=old", "eyJ.a-b_c")
    assert url == "ws://h:1/ws/alice?x=1&token=eyJ.a-b_c"
    assert protocols == ["improto.v1", "bearer.eyJ.a-b_c"]


def test_a_token_a_subprotocol_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="subprotocol"):
        connection_target("ws://h:1/ws/alice", "has space")


def test_the_token_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPROTO_TOKEN", "from-env")
    assert parser().parse_args(["ws://h:1/ws/a"]).token == "from-env"
    assert parser().parse_args(["ws://h:1/ws/a", "--token", "flag"]).token == "flag"


def test_the_nickname_is_the_last_path_segment() -> None:
    assert nickname_of("ws://h:1/ws/%E5%B0%8F%E4%BA%8C") == "小二"
    assert nickname_of("ws://h:1/bob/") == "bob"


def test_a_url_that_is_no_websocket_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["http://h:1/ws/alice"])
    assert exit_.value.code == 2
    assert "ws://HOST:PORT/ws/NICKNAME" in capsys.readouterr().err


def test_help_runs_without_a_terminal() -> None:
    argv, env = chat_command("--help")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    assert "usage: improto-chat" in out.stdout and "--token" in out.stdout
