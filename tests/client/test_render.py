"""Lines laid out for an 80-column terminal: timestamps, names, wrapping, no raw escapes."""

from __future__ import annotations

from datetime import datetime

from improto.client.render import INDENT, Kind, Line, clean, format_line, show_value, width_of

AT = datetime(2026, 12, 2, 9, 5)


def test_a_chat_line_has_time_place_and_sender() -> None:
    assert format_line(Line(AT, Kind.CHAT, "build is green", "[dev] max")) == [
        "09:05 [dev] max: build is green"
    ]
    assert format_line(Line(AT, Kind.INFO, "bob joined dev")) == ["09:05 -- bob joined dev"]
    assert format_line(Line(AT, Kind.ERROR, "bad_name: no")) == ["09:05 !! bad_name: no"]


def test_long_lines_wrap_under_the_text_and_lose_nothing() -> None:
    text = " ".join(f"word{i}" for i in range(60))
    rows = format_line(Line(AT, Kind.CHAT, text, "[dev] max"), width=79)
    assert len(rows) > 3
    assert all(width_of(row) <= 79 for row in rows)
    assert all(row.startswith(" " * INDENT) and row[INDENT] != " " for row in rows[1:])
    assert " ".join(" ".join(rows).split()[3:]) == text


def test_words_longer_than_a_row_and_wide_characters_are_cut_at_the_edge() -> None:
    for text in ("x" * 300, "小二" * 100):
        rows = format_line(Line(AT, Kind.CHAT, text, "[dev] max"), width=40)
        assert all(width_of(row) <= 40 for row in rows), rows
        assert "".join(row.strip() for row in rows).endswith(text)
    assert width_of("小二") == 4


def test_a_long_group_and_name_wrap_too() -> None:
    rows = format_line(Line(AT, Kind.CHAT, "hi", f"[{'g' * 64}] {'n' * 32}"), width=40)
    assert all(width_of(row) <= 40 for row in rows)


def test_newlines_start_indented_rows() -> None:
    rows = format_line(Line(AT, Kind.CHAT, "one\ntwo", "[dev] max"))
    assert rows == ["09:05 [dev] max: one", " " * INDENT + "two"]


def test_control_characters_never_reach_the_terminal() -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\x00"
    shown = "".join(format_line(Line(AT, Kind.CHAT, evil, "[dev] \x1b[31mmax")))
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in shown)
    assert "\\x1b]0;pwned\\x07" in shown and "\\u202e" in shown
    assert clean("tab\there") == "tab    here"


def test_non_string_messages_show_as_json() -> None:
    assert show_value({"a": [1, "小"]}) == '{"a": [1, "小"]}'
    assert show_value("plain") == "plain"
