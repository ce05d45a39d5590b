"""What the user types, parsed: every command, its aliases and its misuse."""

from __future__ import annotations

import pytest

from improto.client import commands as cmd


@pytest.mark.parametrize(
    "line, command",
    [
        ("hello there", cmd.Say("hello there")),
        ("  spaced  ", cmd.Say("  spaced  ")),
        ("//join is a word", cmd.Say("/join is a word")),
        ("/join dev", cmd.Join("dev")),
        ("/j dev", cmd.Join("dev")),
        ('/join "night shift"', cmd.Join("night shift")),
        ("/leave", cmd.Leave(None)),
        ("/leave dev", cmd.Leave("dev")),
        ("/msg bob lunch at 12?", cmd.PrivateMessage("bob", "lunch at 12?")),
        ('/msg "big bob" hi', cmd.PrivateMessage("big bob", "hi")),
        ("/dm 小二 你好", cmd.PrivateMessage("小二", "你好")),
        ("/to dev", cmd.SwitchTo("dev")),
        ("/who", cmd.WhoIs(None)),
        ("/who dev", cmd.WhoIs("dev")),
        ("/WHO dev", cmd.WhoIs("dev")),
        ("/help", cmd.Help()),
        ("/quit", cmd.Quit()),
        ("/exit", cmd.Quit()),
    ],
)
def test_parse(line: str, command: cmd.Command) -> None:
    assert cmd.parse(line) == command


@pytest.mark.parametrize(
    "line, usage",
    [
        ("/join", "Usage: /join GROUP"),
        ("/join a b", "Usage: /join GROUP"),
        ("/to", "Usage: /to GROUP"),
        ("/msg bob", "Usage: /msg USER TEXT"),
        ("/msg", "Usage: /msg USER TEXT"),
        ("/who a b", "Usage: /who [GROUP]"),
        ("/frobnicate", "Unknown command /frobnicate; /help lists them."),
    ],
)
def test_misuse_says_how(line: str, usage: str) -> None:
    assert cmd.parse(line) == cmd.Invalid(usage)


def test_blank_lines_are_nothing() -> None:
    assert cmd.parse("") is None
    assert cmd.parse("   ") is None


def test_help_fits_80_columns() -> None:
    assert all(len(line) < 80 for line in cmd.HELP)
    for verb in ("/join", "/leave", "/to", "/msg", "/who", "/help", "/quit"):
        assert any(line.startswith(verb + " ") for line in cmd.HELP)
