"""
:class:`TokenMode`: the identity at a handshake is the ``sub`` of a JWT.

A client presents the token in one of three places, looked at in this
order: a ``Sec-WebSocket-Protocol`` entry ``token.<jwt>`` or
``bearer.<jwt>`` (the one header a browser lets a page set), the query
``?token=<jwt>``, or the cookie ``improto_token``. The token subprotocol is
never selected, so it is never sent back.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import attrs
from twisted.logger import Logger

from improto.auth.identity import AuthRefusal, Identity
from improto.auth.verify import TokenRejected, TokenVerifier

_log = Logger()

QUERY_PARAMETER = "token"
COOKIE_NAME = "improto_token"
SUBPROTOCOL_PREFIXES = ("token.", "bearer.")
#: Last path segments that name nobody: the user comes from the token.
UNNAMED_SEGMENTS = ("", "ws")

#: At most 123 bytes, like every close reason.
MISSING = "No token: present a JWT as ?token=, the improto_token cookie or a token.<jwt> subprotocol."


def token_of(request: Any) -> str | None:
    """The JWT a handshake presents, or None."""
    for offered in request.protocols:
        for prefix in SUBPROTOCOL_PREFIXES:
            if offered.startswith(prefix) and len(offered) > len(prefix):
                return str(offered[len(prefix):])
    values = request.params.get(QUERY_PARAMETER) or []
    if values and values[0]:
        return str(values[0])
    # Autobahn joins repeated Cookie headers with ", ".
    for part in request.headers.get("cookie", "").replace(",", ";").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME and value:
            return value.strip('"')
    return None


def nickname_in_path(path: str) -> str | None:
    """The nickname the URL names, or None for ``/ws``, ``/ws/`` and ``/``."""
    raw = path.rsplit("/", 1)[-1]
    if raw in UNNAMED_SEGMENTS:
        return None
    # Undecodable bytes stay escaped: they then match no token's sub.
    return unquote(raw, errors="backslashreplace")


@attrs.frozen
class TokenMode:
    verifier: TokenVerifier
    verified = True

    def identify(self, request: Any) -> Identity:
        try:
            identity = self._identify(request)
        except AuthRefusal as refusal:
            _log.info(
                "Refused connection from {peer} ({status}): {reason}",
                peer=request.peer, status=refusal.status, reason=refusal.reason,
            )
            raise
        return identity

    def _identify(self, request: Any) -> Identity:
        token = token_of(request)
        if token is None:
            raise AuthRefusal.unauthenticated(MISSING)
        try:
            claims = self.verifier.verify(token)
        except TokenRejected as e:
            raise AuthRefusal.unauthenticated(e.reason) from None
        named = nickname_in_path(request.path)
        if named is not None and named != claims.user:
            raise AuthRefusal.forbidden(
                f"The token is for {claims.user!r}, not for the nickname in the URL."
            )
        return Identity(claims.user, claims.groups)

    def describe(self) -> str:
        verifier = self.verifier
        checks = [f"audience {verifier.audience!r}"] if verifier.audience else []
        if verifier.issuer:
            checks.append(f"issuer {verifier.issuer!r}")
        checks.append(f"leeway {verifier.leeway:g} s")
        return (
            f"Token mode: identities are verified JWTs ({verifier.keys.source}; "
            f"{', '.join(checks)}); connections without a valid token are refused."
        )
