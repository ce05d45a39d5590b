"""
Which pages may open WebSockets here: the ``Origin`` check.

A browser sends the page's origin with every WebSocket handshake and lets
any page connect anywhere, so without this check any site a user visits
could chat in their name. The rule:

* no ``Origin`` header: allowed. Only browsers send one, and a program
  that is not a browser can send whatever it likes, so refusing it would
  protect nobody (terminals, bots, the conformance suite);
* the server's own origin: allowed. The origin's host and port equal the
  ``Host`` header's (a missing port is the scheme's default: 80 for
  http/ws, 443 for https/wss), so the page this server serves always
  works, also behind a proxy that keeps the ``Host`` header;
* anything else only when an ``--allowed-origins`` pattern matches it;
  ``null`` (``file://`` pages, sandboxed frames) only when ``null`` is
  listed, since any page can make itself ``null``.

Autobahn's own check compares the origin with patterns only (never with
the ``Host`` header), spells the default port out (``http://good.example``
never matches) and logs every refusal, so it is switched off (``['*']``)
and this one is used instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

#: Default ports of the schemes an origin (or a WebSocket URL) can have.
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Origin = tuple[str, str, int | None]


def parse_origin(value: str) -> Origin | None:
    """``(scheme, host, port)`` of a serialised origin; None if it is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return scheme, host.lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def spellings(origin: Origin) -> list[str]:
    """The ways a user may write ``origin``: with its port, and without a default one."""
    scheme, host, port = origin
    bare = f"{scheme}://{_host(host)}"
    if port is None:
        return [bare]
    forms = [f"{bare}:{port}"]
    if DEFAULT_PORTS.get(scheme) == port:
        forms.append(bare)
    return forms


def _compile(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(part) for part in pattern.lower().split("*"))
    return re.compile("^" + ".*".join(parts) + "$")


def can_match(pattern: str) -> bool:
    """
    False for a pattern no browser's origin can ever match: one with a path
    or a trailing slash, a query, white space, or no scheme (a browser always
    sends ``scheme://host[:port]``).
    """
    if pattern.lower() == "null" or pattern == "*":
        return True
    if not pattern or any(c.isspace() for c in pattern) or "?" in pattern or "#" in pattern:
        return False
    scheme, sep, rest = pattern.partition("://")
    if not sep:
        # No scheme: only a leading wildcard can stand for one.
        return pattern.startswith("*") and "/" not in pattern
    if "/" in rest or not rest:
        return False
    if "*" in pattern:
        return True
    return parse_origin(pattern) is not None


class OriginPolicy:
    """The rule above, for one list of ``--allowed-origins`` patterns."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(p.strip() for p in patterns if p.strip())
        self.allow_null = any(p.lower() == "null" for p in self.patterns)
        self._regexes = [_compile(p) for p in self.patterns if p.lower() != "null"]
        #: Patterns that can never match (warned about at start-up).
        self.never_matching = tuple(p for p in self.patterns if not can_match(p))

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        """Whether a handshake with this ``Origin`` (None: no header) may proceed."""
        if origin is None:
            return True
        if origin.strip().lower() == "null":
            return self.allow_null
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if same_origin(parsed, host_header):
            return True
        forms = spellings(parsed)
        return any(regex.match(form) for regex in self._regexes for form in forms)


def same_origin(origin: Origin, host_header: str | None) -> bool:
    """Whether ``origin`` names the host and port this request was sent to."""
    scheme, host, port = origin
    if scheme not in DEFAULT_PORTS or not host_header:
        return False
    try:
        target = urlsplit("//" + host_header.strip())
        target_port = target.port
    except ValueError:
        return False
    if target.hostname is None or target.hostname.lower() != host:
        return False
    if target_port is None:
        # "Host: example.com" reached the default port of the page's scheme.
        return port == DEFAULT_PORTS[scheme]
    return port == target_port
