"""
Verification keys, each pinned to the algorithms its type allows.

The algorithm a token may use is decided by the key the server holds, never
by the token's own header: an HMAC secret verifies HS256 only, an RSA key
RS256 only, an EC key ES256/ES384 only. That rules out ``alg: none`` and the
classic confusion attack (an HS256 token "signed" with the server's public
key as if it were a shared secret).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

#: RFC 7518 section 3.2: an HS256 key must be at least as long as the hash.
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384"}


class KeyFileError(ValueError):
    """A key file the server cannot use; a one-line start-up error."""


class UnknownKey(Exception):
    """No key of the server's matches the token's ``kid``."""


@attrs.frozen
class PinnedKey:
    """A key and the only algorithms a token checked with it may use."""

    #: bytes for HMAC; a ``cryptography`` public key otherwise.
    key: Any = attrs.field(repr=False)
    algorithms: tuple[str, ...]
    kid: str | None = None


@attrs.frozen
class Keys:
    """
    The keys of one ``--auth-*`` option. A secret or a PEM key is one key
    whatever ``kid`` a token names; a JWKS is looked up by ``kid``.
    """

    keys: tuple[PinnedKey, ...]
    source: str
    by_kid: bool = False

    def select(self, kid: object) -> PinnedKey:
        if not self.by_kid:
            return self.keys[0]
        if kid is None and len(self.keys) == 1:
            return self.keys[0]
        if kid is None:
            raise UnknownKey("The token has no 'kid' header; this server needs one to pick its key.")
        for pinned in self.keys:
            if pinned.kid == kid:
                return pinned
        raise UnknownKey("The token's 'kid' names no key this server knows.")

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(sorted({alg for pinned in self.keys for alg in pinned.algorithms}))


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the {what} {path!r}: {e.strerror or e}") from None


def algorithms_for(public_key: Any) -> tuple[str, ...]:
    """The algorithms a public key verifies, by its type (and curve)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"an RSA key needs at least {MIN_RSA_BITS} bits, not {public_key.key_size}")
        return ("RS256",)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(public_key.curve.name)
        if alg is None:
            raise KeyFileError(f"EC curve {public_key.curve.name} is not supported (P-256 or P-384)")
        return (alg,)
    raise KeyFileError("only RSA (RS256) and EC P-256/P-384 (ES256/ES384) public keys are supported")


def secret_from_file(path: str) -> Keys:
    """``--auth-secret``: the file's bytes, surrounding white space stripped."""
    secret = _read(path, "secret file").strip()
    if secret.startswith(b"-----BEGIN") or secret.startswith(b"ssh-"):
        raise KeyFileError(
            f"{path!r} holds a PEM or SSH key, not a shared secret; use --auth-public-key for public keys"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(
            f"the secret in {path!r} is {len(secret)} bytes; HS256 needs at least {MIN_SECRET_BYTES}"
        )
    return Keys((PinnedKey(secret, ("HS256",)),), f"HS256 secret from {path}")


def public_key_from_file(path: str) -> Keys:
    """``--auth-public-key``: one PEM public key (RSA or EC)."""
    data = _read(path, "public key file")
    try:
        public_key = load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{path!r} is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    algorithms = algorithms_for(public_key)
    return Keys((PinnedKey(public_key, algorithms),), f"{algorithms[0]} public key from {path}")


def jwks_from_file(path: str) -> Keys:
    """``--auth-jwks``: a JSON Web Key Set of public RSA/EC keys, picked by ``kid``."""
    try:
        document = json.loads(_read(path, "JWKS file"))
    except ValueError as e:
        raise KeyFileError(f"{path!r} is not JSON: {e}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f"{path!r} is not a JWKS: it needs a \"keys\" list")
    keys: list[PinnedKey] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyFileError(f"key {index} in {path!r} is not a JSON object")
        if entry.get("use", "sig") != "sig":
            continue
        keys.append(_jwk_key(entry, f"key {index} in {path!r}"))
    if not keys:
        raise KeyFileError(f"{path!r} holds no signing key")
    kids = [pinned.kid for pinned in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise KeyFileError(f"every key in {path!r} needs its own \"kid\" when there are several")
    return Keys(tuple(keys), f"JWKS {path} ({len(keys)} keys)", by_kid=True)


def _jwk_key(entry: dict[str, Any], where: str) -> PinnedKey:
    if entry.get("kty") not in ("RSA", "EC"):
        raise KeyFileError(f"{where}: only RSA and EC public keys are accepted, not kty {entry.get('kty')!r}")
    if "d" in entry:
        raise KeyFileError(f"{where} is a private key; a JWKS for verifying holds public keys only")
    try:
        public_key = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError) as e:
        raise KeyFileError(f"{where} is not a usable key: {e}") from None
    algorithms = algorithms_for(public_key)
    if "alg" in entry and entry["alg"] not in algorithms:
        raise KeyFileError(f"{where} says alg {entry['alg']!r}, but its key type verifies {algorithms[0]}")
    kid = entry.get("kid")
    return PinnedKey(public_key, algorithms, kid if isinstance(kid, str) else None)
