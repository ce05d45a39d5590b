"""improto-token / python -m improto.auth: tokens the verifier accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from improto.auth import authenticator_from_options
from improto.auth.mint import main
from tests.auth import tokens


def minted(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out.strip()


def test_an_hs256_token_for_the_server(capsys, tmp_path) -> None:
    secret = tokens.write(tmp_path, "s.key", tokens.SECRET + b"\n")
    token = minted(capsys, "--secret-file", secret, "--sub", "alice", "--ttl", "60",
                   "--aud", "chat", "--iss", "me", "--group", "dev", "--group", "ops")
    mode = authenticator_from_options({"auth-secret": secret, "auth-audience": "chat", "auth-issuer": "me"})
    claims = mode.verifier.verify(token)
    assert (claims.user, claims.groups) == ("alice", {"dev", "ops", "lobby"})


@pytest.mark.parametrize("make_key", [tokens.rsa_key, tokens.ec_key], ids=["RS256", "ES256"])
def test_a_token_signed_with_a_private_key(capsys, tmp_path, make_key) -> None:
    private = make_key()
    key_file = tokens.write(tmp_path, "key.pem", tokens.private_pem(private))
    token = minted(capsys, "--private-key", key_file, "--sub", "bob")
    mode = authenticator_from_options({"auth-public-key": tokens.write(tmp_path, "pub.pem", tokens.public_pem(private))})
    assert mode.verifier.verify(token).user == "bob"


def test_a_ttl_in_the_past_mints_an_expired_token(capsys, tmp_path) -> None:
    secret = tokens.write(tmp_path, "s.key", tokens.SECRET)
    token = minted(capsys, "--secret-file", secret, "--sub", "alice", "--ttl", "-600")
    mode = authenticator_from_options({"auth-secret": secret})
    with pytest.raises(Exception, match="expired"):
        mode.verifier.verify(token)


def test_bad_key_file_is_one_line_and_status_1(capsys, tmp_path) -> None:
    assert main(["--secret-file", str(tmp_path / "none"), "--sub", "a"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("improto-token: cannot read the secret file") and err.count("\n") == 1


def test_python_dash_m(tmp_path) -> None:
    secret = tokens.write(tmp_path, "s.key", tokens.SECRET)
    out = subprocess.run(
        [sys.executable, "-m", "improto.auth", "--secret-file", secret, "--sub", "zoe"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    assert authenticator_from_options({"auth-secret": secret}).verifier.verify(out).user == "zoe"
