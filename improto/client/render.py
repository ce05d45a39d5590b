"""
Display lines laid out for a terminal, sans IO: a timestamp, where the line
belongs, who said it, and the text wrapped to the terminal's width with a
hanging indent, so an 80-column terminal stays readable.

Everything from the server is untrusted: control characters (an ANSI escape
in a message could repaint or retitle the user's terminal) are shown as
visible escapes, never written raw.
"""

from __future__ import annotations

import enum
import json
import unicodedata
from datetime import datetime
from typing import Any

import attrs
from wcwidth import wcwidth

#: Continuation lines start under the text after "HH:MM ".
INDENT = 6


class Kind(enum.Enum):
    CHAT = "chat"
    INFO = "info"
    ERROR = "error"


@attrs.frozen
class Line:
    """One thing to show: a chat message, a notice, or an error."""

    at: datetime
    kind: Kind
    text: str
    #: For chat lines: "[dev] bob" or "[private → bob] alice"; shown before ": ".
    head: str = ""
    #: Appended after the text, e.g. the reason a message failed.
    note: str = ""

    def plain(self) -> str:
        """The line unwrapped, for tests and logs."""
        return format_line(self, width=10_000)[0]


def show_value(msg: Any) -> str:
    """A message body as text: strings as they are, other JSON as JSON."""
    if isinstance(msg, str):
        return msg
    return json.dumps(msg, ensure_ascii=False)


def clean(text: str) -> str:
    """``text`` with every control or format character made visible."""
    out = []
    for char in text:
        if char == "\n":
            out.append(char)
        elif char == "\t":
            out.append("    ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def width_of(text: str) -> int:
    """Terminal columns ``text`` takes (CJK characters take two)."""
    return sum(max(wcwidth(char), 0) for char in text)


def _fill(words: list[str], first: str, indent: str, width: int) -> list[str]:
    """Greedy fill: ``first`` starts line one, ``indent`` the others."""
    lines: list[str] = []
    current, used = first, width_of(first)
    fresh = True  # nothing but the prefix on ``current`` yet
    for word in words:
        size = width_of(word)
        gap = 0 if fresh else 1
        if used + gap + size <= width:
            current += (" " if gap else "") + word
            used += gap + size
            fresh = False
            continue
        if not fresh:
            lines.append(current)
            current, used, fresh = indent, len(indent), True
        # A word longer than a whole line is cut where it reaches the edge.
        for char in word:
            char_width = max(wcwidth(char), 0)
            if used + char_width > width and not fresh:
                lines.append(current)
                current, used = indent, len(indent)
            current += char
            used += char_width
            fresh = False
    lines.append(current)
    return lines


def format_line(line: Line, width: int = 80) -> list[str]:
    """``line`` as terminal rows of at most ``width`` columns."""
    width = max(width, INDENT + 10)
    stamp = line.at.strftime("%H:%M") + " "
    match line.kind:
        case Kind.CHAT:
            prefix = f"{stamp}{clean(line.head)}: "
        case Kind.INFO:
            prefix = f"{stamp}-- "
        case Kind.ERROR:
            prefix = f"{stamp}!! "
    text = clean(line.text) + (f"  {clean(line.note)}" if line.note else "")
    indent = " " * INDENT
    rows: list[str] = []
    for number, paragraph in enumerate(text.split("\n")):
        words = [word for word in paragraph.split(" ") if word]
        if number == 0:
            # The prefix wraps like text, should a long group and name fill a row.
            rows.extend(_fill(prefix.split() + words, "", indent, width))
        else:
            rows.extend(_fill(words, indent, indent, width))
    return [row.rstrip() for row in rows]
