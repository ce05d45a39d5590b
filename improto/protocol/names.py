"""
Nicknames and group names: what a name may be, and its one spelling.

Names are shown to other people and compared for identity (a private
message goes to "every connection of bob"), so each name is reduced to
one canonical spelling first: Unicode NFKC. ``café`` typed with a
precomposed ``é`` and with ``e`` + U+0301 are one user, and fullwidth
``ａｌｉｃｅ`` is ``alice``. Characters that are invisible or reorder text
are refused rather than silently stripped, and so are look-alikes of the
reserved system name, which the seed pages print as the sender of errors.
"""

from __future__ import annotations

import functools
import unicodedata

from improto.protocol.errors import ErrorCode, ProtocolError

#: The sender name on error frames for seed pages; no user may take it.
SYSTEM_NAME = "improto"

MAX_NAME_LENGTH = 32
MAX_GROUP_LENGTH = 64
#: Combining marks allowed in a row after one base character: enough for
#: Indic and Thai syllables (consonant + nukta + vowel sign + nasal), not
#: for "Zalgo" stacks that spill over the lines above and below.
MAX_MARKS_IN_A_ROW = 3

_REFUSED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))

#: Characters that look like a letter of ``improto`` in common fonts,
#: after NFKC and case folding and with combining marks removed (which
#: already maps fullwidth, mathematical and accented forms). A short
#: hand-made subset of Unicode's confusables for this one name; the
#: packages that ship the full table are unmaintained or megabytes large.
_LOOK_ALIKES = {
    "i": "l1|!ıɩɪɨіӏιǀꙇ",
    "m": "мᴍɱϻ",
    "p": "рρϱþᴘƿ",
    "r": "гʀᴦꭇɾ",
    "o": "0оοσօᴏᴑøɵөѳ०๐໐〇",
    "t": "тτᴛŧ",
}
_SKELETON = str.maketrans({c: latin for latin, cs in _LOOK_ALIKES.items() for c in cs})


def normalize_name(name: str) -> str:
    """The canonical (NFKC) spelling of a name, as users are known by it."""
    return unicodedata.normalize("NFKC", name)


def skeleton(name: str) -> str:
    """
    What ``name`` looks like, reduced to plain Latin letters where it
    imitates the reserved name: two names with one skeleton look alike.
    """
    folded = unicodedata.normalize("NFKC", name).casefold()
    bare = "".join(
        c for c in unicodedata.normalize("NFD", folded) if not unicodedata.category(c).startswith("M")
    )
    return bare.translate(_SKELETON).replace("rn", "m")


def _check_marks(name: str, what: str) -> None:
    run = 0
    previous = ""
    for char in name:
        if unicodedata.category(char).startswith("M"):
            if run == 0 and unicodedata.category(previous or " ")[0] not in "LN":
                raise ProtocolError(
                    ErrorCode.BAD_NAME,
                    f"The {what} has the combining mark U+{ord(char):04X} "
                    "with no letter or digit to sit on.",
                )
            run += 1
            if run > MAX_MARKS_IN_A_ROW:
                raise ProtocolError(
                    ErrorCode.BAD_NAME,
                    f"The {what} stacks more than {MAX_MARKS_IN_A_ROW} combining marks "
                    "on one character.",
                )
        else:
            run = 0
            previous = char


#: Accepted names remembered (a refusal raises, and is not remembered): the
#: rules are a pure function of the name, and the same nicknames come back
#: with every reconnect and page reload, each check a few µs of Unicode
#: look-ups. Bounded, so names that never come back only evict each other.
CHECKED_NAMES = 4096


def check_name(name: str, what: str = "nickname", limit: int = MAX_NAME_LENGTH) -> str:
    """
    Return the canonical spelling of ``name`` if it may be a nickname or
    group name, else raise :class:`ProtocolError` (``bad_name``).

    Every rule applies to the NFKC form, the name others will see, so a
    rule cannot be dodged with a compatibility character (a fullwidth
    ``／`` is a ``/``, an ideographic space is a space).
    """
    return _checked(name, what, limit)


@functools.lru_cache(maxsize=CHECKED_NAMES)
def _checked(name: str, what: str, limit: int) -> str:
    name = normalize_name(name)
    if not name:
        raise ProtocolError(ErrorCode.BAD_NAME, f"The {what} is empty.")
    if len(name) > limit:
        raise ProtocolError(
            ErrorCode.BAD_NAME, f"The {what} is longer than {limit} characters."
        )
    if name != name.strip():
        raise ProtocolError(
            ErrorCode.BAD_NAME, f"The {what} starts or ends with white space."
        )
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ProtocolError(
                ErrorCode.BAD_NAME,
                f"The {what} contains the control character U+{ord(char):04X}.",
            )
    if "/" in name:
        raise ProtocolError(ErrorCode.BAD_NAME, f"The {what} contains '/'.")
    _check_marks(name, what)
    if what == "nickname" and skeleton(name) == SYSTEM_NAME:
        if name.casefold() == SYSTEM_NAME:
            raise ProtocolError(ErrorCode.BAD_NAME, f"The nickname '{name}' is reserved.")
        raise ProtocolError(
            ErrorCode.BAD_NAME,
            f"The nickname '{name}' looks like the reserved name '{SYSTEM_NAME}'.",
        )
    return name
