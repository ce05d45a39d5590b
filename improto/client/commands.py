"""
What the user types, parsed into commands; sans IO.

Plain text is a message to the current group; a line starting with ``/``
is a command; ``//text`` sends the text ``/text``. Names with spaces may
be quoted: ``/msg "big bob" hi``.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Say:
    """Text for the current group."""

    text: str


@attrs.frozen
class Join:
    group: str


@attrs.frozen
class Leave:
    #: None: the current group.
    group: str | None


@attrs.frozen
class PrivateMessage:
    to: str
    text: str


@attrs.frozen
class SwitchTo:
    group: str


@attrs.frozen
class WhoIs:
    #: None: the current group.
    group: str | None


@attrs.frozen
class Help:
    pass


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class Invalid:
    """A line that is no command; ``problem`` says why, for the user."""

    problem: str


Command = Say | Join | Leave | PrivateMessage | SwitchTo | WhoIs | Help | Quit | Invalid

#: ``/help`` text: one line per command, each under 80 columns.
HELP = (
    "/join GROUP          join a group and talk in it",
    "/leave [GROUP]       leave a group (default: the current one)",
    "/to GROUP            talk in another group you are in",
    "/msg USER TEXT       a private message to USER (all their devices)",
    "/who [GROUP]         who is in a group (default: the current one)",
    "/help                this help",
    "/quit                leave (also Ctrl-D)",
    "TEXT                 a message to the current group; //TEXT sends /TEXT",
)

_ALIASES = {
    "j": "join", "part": "leave", "m": "msg", "dm": "msg", "query": "msg",
    "switch": "to", "w": "who", "h": "help", "?": "help", "q": "quit", "exit": "quit",
}


def split_name(rest: str) -> tuple[str, str]:
    """The first name in ``rest`` (quoted if it has spaces) and what follows."""
    rest = rest.lstrip()
    if rest.startswith('"'):
        end = rest.find('"', 1)
        if end > 0:
            return rest[1:end], rest[end + 1:].lstrip()
    name, _, tail = rest.partition(" ")
    return name, tail.lstrip()


def parse(line: str) -> Command | None:
    """The command for one input line; None for a blank line."""
    if not line.strip():
        return None
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    word, _, rest = line[1:].partition(" ")
    verb = _ALIASES.get(word.lower(), word.lower())
    name, tail = split_name(rest)
    match verb:
        case "join" | "to":
            if not name or tail:
                return Invalid(f"Usage: /{verb} GROUP")
            return Join(name) if verb == "join" else SwitchTo(name)
        case "leave" | "who":
            if tail:
                return Invalid(f"Usage: /{verb} [GROUP]")
            return Leave(name or None) if verb == "leave" else WhoIs(name or None)
        case "msg":
            if not name or not tail:
                return Invalid("Usage: /msg USER TEXT")
            return PrivateMessage(name, tail)
        case "help":
            return Help()
        case "quit":
            return Quit()
    return Invalid(f"Unknown command /{word}; /help lists them.")
