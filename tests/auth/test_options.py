"""From twistd options to an authenticator; bad options are one-line start-up errors."""

from __future__ import annotations

import json

import pytest

from improto.auth import OPEN_MODE, KeyFileError, TokenMode, announce, authenticator_from_options
from improto.tap import Options
from tests.auth import tokens


def test_no_key_option_is_open_mode() -> None:
    assert authenticator_from_options({}) is OPEN_MODE


def test_each_key_option_makes_token_mode(tmp_path) -> None:
    private = tokens.rsa_key()
    files = {
        "auth-secret": tokens.write(tmp_path, "s.key", tokens.SECRET + b"\n"),
        "auth-public-key": tokens.write(tmp_path, "pub.pem", tokens.public_pem(private)),
        "auth-jwks": tokens.write(tmp_path, "jwks.json", json.dumps({"keys": [tokens.jwk(private, "k")]})),
    }
    for name, path in files.items():
        mode = authenticator_from_options({name: path, "auth-audience": "chat", "auth-leeway": 5.0})
        assert isinstance(mode, TokenMode)
        assert (mode.verifier.audience, mode.verifier.leeway) == ("chat", 5.0)
    secret = authenticator_from_options({"auth-secret": files["auth-secret"]})
    assert secret.verifier.keys.keys[0].key == tokens.SECRET  # stripped


def test_options_that_make_no_sense(tmp_path) -> None:
    path = tokens.write(tmp_path, "s.key", tokens.SECRET)
    with pytest.raises(ValueError, match="give one of"):
        authenticator_from_options({"auth-secret": path, "auth-jwks": path})
    with pytest.raises(ValueError, match="--auth-audience needs token mode"):
        authenticator_from_options({"auth-audience": "chat"})


@pytest.mark.parametrize(
    "option, content, message",
    [
        ("auth-secret", b"short\n", "HS256 needs at least 32"),
        ("auth-secret", None, "cannot read the secret file"),
        ("auth-public-key", b"not a key", "is not a PEM public key"),
        ("auth-jwks", b"{", "is not JSON"),
        ("auth-jwks", b'{"keys": []}', "holds no signing key"),
        ("auth-jwks", b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "only RSA and EC public keys"),
    ],
)
def test_unusable_key_files(tmp_path, option: str, content: bytes | None, message: str) -> None:
    path = str(tmp_path / "missing") if content is None else tokens.write(tmp_path, "f", content)
    with pytest.raises(KeyFileError, match=message):
        authenticator_from_options({option: path})


def test_a_public_key_given_as_the_secret_is_refused(tmp_path) -> None:
    """Using a public key as an HMAC secret is how the confusion attack starts."""
    pem = tokens.public_pem(tokens.rsa_key())
    with pytest.raises(KeyFileError, match="not a shared secret"):
        authenticator_from_options({"auth-secret": tokens.write(tmp_path, "pub.pem", pem)})


def test_private_keys_are_refused_where_public_ones_belong(tmp_path) -> None:
    private = tokens.rsa_key()
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        authenticator_from_options({"auth-public-key": tokens.write(tmp_path, "k", tokens.private_pem(private))})
    entry = {**tokens.jwk(private, "k"), "d": "AQAB"}
    with pytest.raises(KeyFileError, match="is a private key"):
        authenticator_from_options({"auth-jwks": tokens.write(tmp_path, "j", json.dumps({"keys": [entry]}))})


def test_jwks_with_several_keys_needs_distinct_kids(tmp_path) -> None:
    keys = [tokens.jwk(tokens.ec_key(), "same"), tokens.jwk(tokens.ec_key(), "same")]
    with pytest.raises(KeyFileError, match="own \"kid\""):
        authenticator_from_options({"auth-jwks": tokens.write(tmp_path, "j", json.dumps({"keys": keys}))})


def test_twistd_options_fail_in_one_line(tmp_path) -> None:
    options = Options()
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["--auth-secret", str(tmp_path / "nope")])
    assert str(info.value).startswith("twistd improto: cannot read the secret file")
    assert "\n" not in str(info.value)
    good = Options()
    good.parseOptions(["--auth-secret", tokens.write(tmp_path, "s", tokens.SECRET), "--auth-leeway", "2"])
    assert good["authenticator"].verifier.leeway == 2.0


def test_the_mode_is_announced_in_one_line(caplog_events, tmp_path) -> None:
    announce(OPEN_MODE)
    announce(authenticator_from_options({"auth-secret": tokens.write(tmp_path, "s", tokens.SECRET)}))
    lines = [e["mode"] for e in caplog_events if "mode" in e]
    assert lines[0].startswith("Open mode: nicknames are not verified; anyone can connect as anyone.")
    assert lines[1].startswith("Token mode: identities are verified JWTs (HS256 secret from")
    assert [e["log_level"].name for e in caplog_events if "mode" in e] == ["warn", "info"]
