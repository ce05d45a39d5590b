"""Names: one spelling per name, and no look-alikes of the reserved one."""

from __future__ import annotations

import unicodedata

import pytest

from improto.protocol import codec
from improto.protocol.codec import ErrorCode, ProtocolError
from improto.protocol.names import skeleton


def bad(name: str, what: str = "nickname") -> str:
    with pytest.raises(ProtocolError) as caught:
        codec.check_name(name, what)
    assert caught.value.code is ErrorCode.BAD_NAME
    return caught.value.reason


@pytest.mark.parametrize(
    "typed, canonical",
    [
        ("cafe\u0301", "café"),  # NFD, as macOS file names and some keyboards give it
        ("café", "café"),
        ("ａｌｉｃｅ", "alice"),  # fullwidth
        ("𝐛𝐨𝐛", "bob"),  # mathematical bold
        ("ﬁona", "fiona"),  # ligature
        ("Å", "Å"),  # ANGSTROM SIGN -> LATIN CAPITAL A WITH RING
    ],
)
def test_names_are_returned_in_nfkc(typed, canonical):
    assert codec.check_name(typed) == canonical
    assert codec.check_name(typed) == unicodedata.normalize("NFC", canonical)


def test_group_names_too():
    assert codec.check_name("ｄｅｖ", "group name", 64) == "dev"
    assert codec.decode('{"type":"join","group":"ｄｅｖ"}') == codec.Join("dev")


def test_private_recipients_are_normalised_like_names():
    assert codec.decode('{"type":"private","to":"cafe\\u0301","msg":"x"}').to == "café"
    assert codec.decode('{"to_user":"ｂｏｂ","msg":"x"}').to == "bob"


@pytest.mark.parametrize(
    "name",
    [
        "improto", "IMPROTO", "іmproto",  # Cyrillic і
        "imprοto",  # Greek omicron
        "impr0t0", "lmproto", "1mproto", "irnproto",  # rn looks like m
        "ımproto", "ｉｍｐｒｏｔｏ", "impróto", "i\u0307mproto", "ІМРROТО",
        "improтo", "imрroto",
    ],
)
def test_look_alikes_of_the_reserved_name_are_refused(name):
    reason = bad(name)
    assert "reserved" in reason and "improto" in reason.casefold()


@pytest.mark.parametrize("name", ["improv", "imp roto", "improto2", "protoim", "Ирина", "Όλγα", "小二"])
def test_other_names_are_not_look_alikes(name):
    assert codec.check_name(name) == name


def test_the_reserved_name_is_a_nickname_rule_only():
    assert codec.check_name("іmproto", "group name", 64) == "іmproto"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("\u0301abc", "U+0301"),  # a mark with nothing under it
        ("a \u0301b", "U+0301"),
        ("-\u0301", "U+0301"),
        ("Z\u0351\u0352\u0353\u0354o", "more than 3"),
        ("ｂｏｂ／ｘ", "'/'"),  # fullwidth solidus is a solidus
        ("bob\u3000", "white space"),  # ideographic space
    ],
)
def test_marks_and_compatibility_characters(name, fragment):
    assert fragment in bad(name)


@pytest.mark.parametrize("name", ["अनुराग", "क़ीं", "สมชาย", "Nguyễn", "e\u0301\u0302"])
def test_real_scripts_with_marks_pass(name):
    assert codec.check_name(name)


def test_skeleton_is_what_it_looks_like():
    assert skeleton("ІМРRОТО") == skeleton("improto") == "improto"


def test_remembered_names_answer_as_the_first_check_did():
    """check_name remembers accepted names only: a refusal is raised every time."""
    from improto.protocol import names

    names._checked.cache_clear()
    for _ in range(3):
        assert names.check_name("ａｌｉｃｅ") == "alice"
        assert names.check_name("room", "group name", names.MAX_GROUP_LENGTH) == "room"
        with pytest.raises(ProtocolError):
            names.check_name("impr0to")
        with pytest.raises(ProtocolError):
            names.check_name("x" * 40)
    assert names.check_name("x" * 40, "group name", names.MAX_GROUP_LENGTH) == "x" * 40
    info = names._checked.cache_info()
    assert info.hits == 4 and info.currsize == 3
