"""
Who a connection is: the :class:`Authenticator` a chat route asks at the
handshake, and the two modes it can be in.

*Open mode* (the default, as in the seeds) believes the nickname in the URL.
*Token mode* (:class:`improto.auth.handshake.TokenMode`) believes only a
signed JWT. Either answers with an :class:`Identity` or raises
:class:`AuthRefusal`; the web layer turns a refusal into an HTTP status or,
for clients that cannot read one, a 44xx close code.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import unquote

import attrs
from autobahn.websocket.types import ConnectionDeny

from improto.protocol import codec
from improto.protocol.codec import ErrorCode, ProtocolError

#: Close codes for clients that offered ``improto.v1`` (see docs/auth.md).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


@attrs.frozen
class Identity:
    user: str
    #: Groups the user may join (always with the lobby); None = any.
    groups: frozenset[str] | None = None


@attrs.frozen
class AuthRefusal(Exception):
    """
    The handshake is refused: ``status`` 401 (we do not know who you are)
    or 403 (we do, and you may not connect like this).
    """

    status: int
    reason: str

    @classmethod
    def unauthenticated(cls, reason: str) -> AuthRefusal:
        return cls(401, reason)

    @classmethod
    def forbidden(cls, reason: str) -> AuthRefusal:
        return cls(403, reason)

    @property
    def close_code(self) -> int:
        return CLOSE_UNAUTHENTICATED if self.status == 401 else CLOSE_FORBIDDEN

    def http_denial(self) -> ConnectionDeny:
        """The HTTP answer; its status line must be one line of ASCII."""
        reason = self.reason.encode("ascii", "backslashreplace").decode("ascii")
        return ConnectionDeny(self.status, reason)


class Authenticator(Protocol):
    #: False when identities are whatever the client claims.
    verified: bool

    def identify(self, request: Any) -> Identity:
        """
        The identity of an Autobahn ``ConnectionRequest`` (its ``path``,
        ``params``, ``headers`` and ``protocols``). Raises
        :class:`AuthRefusal`, or :class:`ProtocolError` for a bad nickname.
        """
        ...

    def describe(self) -> str:
        """One line for the start-up log."""
        ...


def parse_chat_path(path: str) -> str:
    """
    The nickname in ``/ws/<nick>`` or ``/<nick>``, percent-decoded: the
    last path segment, so the route also works mounted under a prefix.

    Raises :class:`ProtocolError` for a path that names nobody acceptable.
    """
    raw = path.rsplit("/", 1)[-1]
    try:
        nickname = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_NAME, "The nickname is not valid UTF-8.") from None
    return codec.check_name(nickname)


@attrs.frozen
class OpenMode:
    """The seed behaviour: the URL's nickname, unverified."""

    verified = False

    def identify(self, request: Any) -> Identity:
        return Identity(parse_chat_path(request.path))

    def describe(self) -> str:
        return (
            "Open mode: nicknames are not verified; anyone can connect as anyone. "
            "Use --auth-secret, --auth-public-key or --auth-jwks for token mode."
        )


OPEN_MODE = OpenMode()
