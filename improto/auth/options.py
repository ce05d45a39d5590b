"""
From ``twistd improto`` options to an :class:`Authenticator`, and the one
start-up line that says which mode the server is in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger

from improto.auth.handshake import TokenMode
from improto.auth.identity import OPEN_MODE, Authenticator
from improto.auth.keys import Keys, jwks_from_file, public_key_from_file, secret_from_file
from improto.auth.verify import DEFAULT_LEEWAY, TokenVerifier

_log = Logger()

KEY_OPTIONS: dict[str, Callable[[str], Keys]] = {
    "auth-secret": secret_from_file,
    "auth-public-key": public_key_from_file,
    "auth-jwks": jwks_from_file,
}


def authenticator_from_options(options: Mapping[str, Any]) -> Authenticator:
    """
    Open mode unless one key option is given. Raises ``ValueError`` with a
    one-line message for a bad combination or an unusable key file.
    """
    given = [name for name in KEY_OPTIONS if options.get(name)]
    if len(given) > 1:
        raise ValueError(f"give one of --auth-secret, --auth-public-key, --auth-jwks, not {len(given)}")
    if not given:
        stray = [name for name in ("auth-audience", "auth-issuer") if options.get(name)]
        if stray:
            raise ValueError(f"--{stray[0]} needs token mode: add --auth-secret, --auth-public-key or --auth-jwks")
        return OPEN_MODE
    name = given[0]
    keys = KEY_OPTIONS[name](options[name])
    leeway = options.get("auth-leeway")
    verifier = TokenVerifier(
        keys,
        audience=options.get("auth-audience") or None,
        issuer=options.get("auth-issuer") or None,
        leeway=DEFAULT_LEEWAY if leeway is None else float(leeway),
    )
    return TokenMode(verifier)


def announce(authenticator: Authenticator) -> None:
    """Say at start-up, in one line, whether identities are verified."""
    if authenticator.verified:
        _log.info("{mode}", mode=authenticator.describe())
    else:
        _log.warn("{mode}", mode=authenticator.describe())
