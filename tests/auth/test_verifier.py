"""TokenVerifier: every way a token can fail, and the reason it fails with."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from improto.auth.keys import Keys, PinnedKey, jwks_from_file, public_key_from_file
from improto.auth.verify import Claims, TokenRejected, TokenVerifier
from tests.auth import tokens
from tests.auth.tokens import SECRET, claims, hs256

HS = Keys((PinnedKey(SECRET, ("HS256",)),), "test secret")


def rejected(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token)
    return info.value.reason


def test_a_good_token_names_its_user() -> None:
    assert TokenVerifier(HS).verify(hs256(claims("小二"))) == Claims("小二", None)


def test_expired() -> None:
    token = hs256(claims(ttl=-120))
    assert rejected(TokenVerifier(HS), token) == "The token has expired."


def test_leeway_forgives_a_little_clock_skew_and_no_more() -> None:
    token = hs256(claims(ttl=-10))
    assert TokenVerifier(HS, leeway=30).verify(token).user == "alice"
    assert rejected(TokenVerifier(HS, leeway=0), token) == "The token has expired."
    early = hs256(claims(nbf=int(time.time()) + 10))
    assert TokenVerifier(HS, leeway=30).verify(early).user == "alice"
    assert "not valid yet" in rejected(TokenVerifier(HS, leeway=0), early)


def test_not_before_in_the_future() -> None:
    token = hs256(claims(nbf=int(time.time()) + 600))
    assert "not valid yet" in rejected(TokenVerifier(HS), token)


def test_exp_is_required() -> None:
    payload = claims()
    del payload["exp"]
    assert rejected(TokenVerifier(HS), hs256(payload)) == "The token has no 'exp' claim."


def test_missing_sub() -> None:
    payload = claims()
    del payload["sub"]
    assert rejected(TokenVerifier(HS), hs256(payload)) == "The token has no 'sub' claim."


@pytest.mark.parametrize("sub", ["", "improto", " alice", "a\u202eb", "x" * 33])
def test_bad_sub_names(sub: str) -> None:
    reason = rejected(TokenVerifier(HS), hs256(claims(sub)))
    assert reason.startswith(("The token's 'sub' is not a valid nickname", "The token is not valid"))


def test_tampered_payload_fails_the_signature() -> None:
    token = tokens.tampered(hs256(claims()))
    assert rejected(TokenVerifier(HS), token) == "The token's signature is not valid."


def test_another_secret_fails_the_signature() -> None:
    token = hs256(claims(), secret=b"s" * 40)
    assert rejected(TokenVerifier(HS), token) == "The token's signature is not valid."


def test_alg_none_is_refused() -> None:
    reason = rejected(TokenVerifier(HS), tokens.unsigned(claims()))
    assert reason == "The token is signed with 'none'; this server accepts HS256 only."


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(HS, audience="chat", issuer="idp")
    assert verifier.verify(hs256(claims(aud="chat", iss="idp"))).user == "alice"
    assert rejected(verifier, hs256(claims(aud="other", iss="idp"))) == "The token's audience (aud) is not 'chat'."
    assert rejected(verifier, hs256(claims(aud="chat", iss="evil"))) == "The token's issuer (iss) is not 'idp'."
    assert rejected(verifier, hs256(claims(iss="idp"))) == "The token has no 'aud' claim."
    assert rejected(verifier, hs256(claims(aud="chat"))) == "The token has no 'iss' claim."
    # A list of audiences passes when it names ours.
    assert verifier.verify(hs256(claims(aud=["x", "chat"], iss="idp"))).user == "alice"


def test_a_token_for_some_audience_is_refused_by_a_server_with_none() -> None:
    # RFC 7519 4.1.3: a recipient not named in aud must reject the token.
    reason = rejected(TokenVerifier(HS), hs256(claims(aud="elsewhere")))
    assert "aud" in reason


def test_garbage_is_not_a_jwt() -> None:
    assert "not a JWT" in rejected(TokenVerifier(HS), "not-a-token")


def test_groups_claim() -> None:
    verifier = TokenVerifier(HS)
    assert verifier.verify(hs256(claims(groups=["dev", "ops"]))).groups == {"dev", "ops", "lobby"}
    assert verifier.verify(hs256(claims(groups=[]))).groups == {"lobby"}
    for bad in ("dev", [1], ["ok", ""]):
        assert "'groups' claim" in rejected(verifier, hs256(claims(groups=bad)))


# -- public keys: the algorithm is the key's, never the token's -----------------------


@pytest.fixture(scope="module")
def rsa_private():
    return tokens.rsa_key()


def test_rs256_with_a_public_key(tmp_path, rsa_private) -> None:
    keys = public_key_from_file(tokens.write(tmp_path, "pub.pem", tokens.public_pem(rsa_private)))
    verifier = TokenVerifier(keys)
    assert verifier.verify(jwt.encode(claims(), rsa_private, algorithm="RS256")).user == "alice"
    other = tokens.rsa_key()
    assert rejected(verifier, jwt.encode(claims(), other, algorithm="RS256")) == \
        "The token's signature is not valid."


def test_hs256_signed_with_the_public_key_is_refused(tmp_path, rsa_private) -> None:
    """The confusion attack: the attacker knows the public key and HMACs with it."""
    pem = tokens.public_pem(rsa_private)
    verifier = TokenVerifier(public_key_from_file(tokens.write(tmp_path, "pub.pem", pem)))
    for key_bytes in (pem, pem.strip()):
        forged = tokens.hmac_with(claims("mallory"), key_bytes)
        assert rejected(verifier, forged) == \
            "The token is signed with 'HS256'; this server accepts RS256 only."
    assert "accepts RS256 only" in rejected(verifier, tokens.unsigned(claims()))


def test_es256_and_rs256_are_not_interchangeable(tmp_path, rsa_private) -> None:
    ec_private = tokens.ec_key()
    ec_keys = public_key_from_file(tokens.write(tmp_path, "ec.pem", tokens.public_pem(ec_private)))
    assert ec_keys.keys[0].algorithms == ("ES256",)
    verifier = TokenVerifier(ec_keys)
    assert verifier.verify(jwt.encode(claims(), ec_private, algorithm="ES256")).user == "alice"
    assert "accepts ES256 only" in rejected(verifier, jwt.encode(claims(), rsa_private, algorithm="RS256"))


def test_jwks_picks_the_key_by_kid(tmp_path, rsa_private) -> None:
    ec_private = tokens.ec_key()
    document = {"keys": [tokens.jwk(rsa_private, "r1"), tokens.jwk(ec_private, "e1")]}
    verifier = TokenVerifier(jwks_from_file(tokens.write(tmp_path, "jwks.json", json.dumps(document))))
    rs = jwt.encode(claims("rita"), rsa_private, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode(claims("eve"), ec_private, algorithm="ES256", headers={"kid": "e1"})
    assert (verifier.verify(rs).user, verifier.verify(es).user) == ("rita", "eve")
    # The right key type under the wrong kid; an unknown kid; no kid.
    wrong = jwt.encode(claims(), rsa_private, algorithm="RS256", headers={"kid": "e1"})
    assert "accepts ES256 only" in rejected(verifier, wrong)
    unknown = jwt.encode(claims(), rsa_private, algorithm="RS256", headers={"kid": "zz"})
    assert rejected(verifier, unknown) == "The token's 'kid' names no key this server knows."
    bare = jwt.encode(claims(), rsa_private, algorithm="RS256")
    assert "no 'kid'" in rejected(verifier, bare)
    # HS256 keyed with the JWK's JSON or the PEM: the confusion attack again.
    forged = tokens.hmac_with(claims(), tokens.public_pem(rsa_private), kid="r1")
    assert "accepts RS256 only" in rejected(verifier, forged)
