"""
``improto-token`` (also ``python -m improto.auth``): mint a JWT for testing
token mode, signed with the same secret or the private half of the key the
server verifies with.

    improto-token --secret-file s.key --sub alice --ttl 3600 --group dev
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from improto.auth.keys import KeyFileError, algorithms_for, secret_from_file


def mint(
    key: Any,
    algorithm: str,
    sub: str,
    *,
    ttl: float = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    groups: Sequence[str] | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``sub``, valid from ``now`` for ``ttl`` seconds."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "nbf": issued, "exp": issued + int(ttl)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if groups is not None:
        claims["groups"] = list(groups)
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def private_key_from_file(path: str) -> tuple[Any, str]:
    """A PEM private key and the algorithm its public half is verified with."""
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise KeyFileError(f"cannot read the private key {path!r}: {e.strerror or e}") from None
    except (ValueError, TypeError):
        raise KeyFileError(f"{path!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyFileError("only RSA and EC private keys are supported")
    return key, algorithms_for(key.public_key())[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="improto-token",
        description="Mint a JWT for an improto server in token mode (for testing).",
    )
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret-file", help="HS256: the file given to --auth-secret")
    key.add_argument("--private-key", help="RS256/ES256: a PEM private key")
    parser.add_argument("--sub", required=True, help="the user (nickname) the token is for")
    parser.add_argument("--ttl", type=float, default=3600, help="seconds until it expires (default 3600)")
    parser.add_argument("--aud", help="audience (--auth-audience of the server)")
    parser.add_argument("--iss", help="issuer (--auth-issuer of the server)")
    parser.add_argument("--group", action="append", dest="groups",
                        help="a group the user may join (repeat; none given = any group)")
    parser.add_argument("--kid", help="key id header, to pick the key in a JWKS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.secret_file:
            key: Any = secret_from_file(args.secret_file).keys[0].key
            algorithm = "HS256"
        else:
            key, algorithm = private_key_from_file(args.private_key)
    except KeyFileError as e:
        print(f"improto-token: {e}", file=sys.stderr)
        return 1
    print(mint(key, algorithm, args.sub, ttl=args.ttl, audience=args.aud, issuer=args.iss,
               groups=args.groups, kid=args.kid))
    return 0
