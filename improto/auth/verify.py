"""
:class:`TokenVerifier`: a JWT in, the user it names (and the groups it
allows) out, or :class:`TokenRejected` with a reason a person can read.

Sans IO and without Autobahn: the signature and the registered claims are
checked by PyJWT, with the algorithms pinned by the key (see
:mod:`improto.auth.keys`), never by the token.
"""

from __future__ import annotations

from typing import Any

import attrs
import jwt

from improto.auth.keys import Keys, UnknownKey
from improto.protocol import codec
from improto.protocol.codec import ProtocolError

#: The claims a token must carry; ``aud``/``iss`` too when configured.
REQUIRED_CLAIMS = ("exp", "sub")
DEFAULT_LEEWAY = 30.0


class TokenRejected(Exception):
    """The token does not prove who the client is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Claims:
    """What a valid token says about its holder."""

    user: str
    #: The groups the user may join; None when the token does not restrict it.
    groups: frozenset[str] | None


@attrs.frozen
class TokenVerifier:
    keys: Keys
    audience: str | None = None
    issuer: str | None = None
    #: Seconds of clock skew forgiven on ``exp``, ``nbf`` and ``iat``.
    leeway: float = DEFAULT_LEEWAY

    def verify(self, token: str) -> Claims:
        payload = self._decode(token)
        return Claims(_subject(payload), _groups(payload))

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRejected("The token is not a JWT (header.payload.signature).") from None
        try:
            pinned = self.keys.select(header.get("kid"))
        except UnknownKey as e:
            raise TokenRejected(str(e)) from None
        alg = header.get("alg")
        if alg not in pinned.algorithms:
            # Checked here as well as by PyJWT, for a clearer reason.
            raise TokenRejected(
                f"The token is signed with {str(alg)[:16]!r}; this server accepts "
                f"{', '.join(pinned.algorithms)} only."
            )
        required = [*REQUIRED_CLAIMS]
        if self.audience is not None:
            required.append("aud")
        if self.issuer is not None:
            required.append("iss")
        try:
            return jwt.decode(
                token,
                pinned.key,
                algorithms=list(pinned.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("The token is not valid yet (its nbf or iat is in the future).") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenRejected(f"The token has no {e.claim!r} claim.") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(_mismatch("audience (aud)", self.audience)) from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(_mismatch("issuer (iss)", self.issuer)) from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("The token's signature is not valid.") from None
        except jwt.InvalidTokenError as e:
            # A malformed segment, a claim of the wrong type, a bad key...
            raise TokenRejected(f"The token is not valid: {e}.") from None


def _mismatch(claim: str, expected: str | None) -> str:
    if expected is None:
        return f"The token names an {claim}, and this server is configured with none."
    return f"The token's {claim} is not {expected!r}."


def _subject(payload: dict[str, Any]) -> str:
    sub = payload.get("sub")
    if not isinstance(sub, str):
        raise TokenRejected("The token's 'sub' claim is not a string.")
    try:
        return codec.check_name(sub)
    except ProtocolError as e:
        raise TokenRejected(f"The token's 'sub' is not a valid nickname: {e.reason}") from None


def _groups(payload: dict[str, Any]) -> frozenset[str] | None:
    """The ``groups`` claim: absent means any group; the lobby is always allowed."""
    if "groups" not in payload:
        return None
    groups = payload["groups"]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise TokenRejected("The token's 'groups' claim must be a list of group names.")
    for group in groups:
        try:
            codec.check_name(group, "group name", codec.MAX_GROUP_LENGTH)
        except ProtocolError as e:
            raise TokenRejected(f"The token's 'groups' claim has a bad name: {e.reason}") from None
    return frozenset(groups) | {codec.LOBBY}
