"""
Token mode as users run it: ``twistd -n improto --auth-secret FILE`` (and
the public-key and JWKS variants) in a subprocess, real sockets. Each
refusal is shown as exactly what the client sees: the HTTP status line
(a client without the improto.v1 subprotocol) or the close code and reason
(a client with it), while a pair of other users keeps chatting.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import wsframes
from tests.auth import tokens
from tests.auth.tokens import claims
from tests.serverproc import ServerProcess, serving, start_server, twistd_path

TIMEOUT = 5
AUD, ISS = "chat.test", "improto-tests"
NATIVE = "improto.v1"


def recv_json(ws: ClientConnection) -> dict:
    return json.loads(ws.recv(timeout=TIMEOUT))


def until(ws: ClientConnection, kind: str) -> dict:
    """The next frame of type ``kind``, skipping presence."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        frame = recv_json(ws)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


def wait_for_log(server: ServerProcess, text: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while text not in server.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} is not in the server log:\n{server.log()}")
        time.sleep(0.05)
    return server.log()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tokens.write(tmp_path_factory.mktemp("keys"), "s.key", tokens.SECRET + b"\n")


@pytest.fixture(scope="module")
def token_server(secret_file: str) -> Iterator[ServerProcess]:
    yield from serving("--rate", "0", "--auth-secret", secret_file,
                       "--auth-audience", AUD, "--auth-issuer", ISS)


def token(sub: str, **extra) -> str:
    return tokens.hs256(claims(sub, aud=AUD, iss=ISS, **extra))


@contextmanager
def chat(server: ServerProcess, sub: str, path: str = "/ws") -> Iterator[ClientConnection]:
    with connect(server.ws + path, subprotocols=[NATIVE, "token." + token(sub)]) as ws:
        assert until(ws, "welcome")["user"] == sub
        yield ws


def raw_handshake(server: ServerProcess, path: str, headers: str = "") -> bytes:
    """The server's whole answer to a hand-written handshake, up to the blank line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(wsframes.handshake(path, headers))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
    return response.split(b"\r\n\r\n", 1)[0]


def still_chatting(alice: ClientConnection, bob: ClientConnection, text: str) -> None:
    # A fresh id: a send that reuses one within the idempotency window is not redelivered.
    request_id = uuid.uuid4().hex
    alice.send(json.dumps({"type": "private", "to": "bob", "msg": text, "id": request_id}))
    assert until(alice, "ack")["id"] == request_id
    assert until(bob, "private")["msg"] == text


# -- start-up ----------------------------------------------------------------------------


def test_token_mode_says_so_at_start_up_and_gives_no_open_mode_warning(token_server) -> None:
    log = wait_for_log(token_server, "Token mode: identities are verified JWTs")
    assert f"audience '{AUD}', issuer '{ISS}', leeway 30 s" in log
    assert "Open mode" not in log


def test_open_mode_warns_that_nicknames_are_not_verified(server: ServerProcess) -> None:
    log = wait_for_log(server, "Open mode: nicknames are not verified; anyone can connect as anyone.")
    assert "Token mode" not in log


# -- who you are -------------------------------------------------------------------------


def test_the_token_names_the_user_in_each_place_it_may_be(token_server) -> None:
    alice = token("alice")
    with connect(token_server.ws + "/ws", subprotocols=[NATIVE, "token." + alice]) as ws:
        assert ws.subprotocol == NATIVE
        assert recv_json(ws)["user"] == "alice"
    with connect(token_server.ws + "/ws/alice", subprotocols=["bearer." + alice, NATIVE]) as ws:
        assert (ws.subprotocol, recv_json(ws)["user"]) == (NATIVE, "alice")
    with connect(f"{token_server.ws}/ws?token={alice}", subprotocols=[NATIVE]) as ws:
        assert recv_json(ws)["user"] == "alice"
    with connect(token_server.ws + "/ws/" + quote("小二"), subprotocols=[NATIVE],
                 additional_headers={"Cookie": f"improto_token={token('小二')}"}) as ws:
        assert recv_json(ws)["user"] == "小二"


def test_the_token_subprotocol_is_never_echoed(token_server) -> None:
    alice = token("alice")
    answer = raw_handshake(token_server, "/ws", f"Sec-WebSocket-Protocol: {NATIVE}, token.{alice}\r\n")
    assert answer.startswith(b"HTTP/1.1 101")
    assert b"\r\nSec-WebSocket-Protocol: improto.v1" in answer
    assert alice.encode() not in answer and b"token." not in answer


def test_seed_dialect_clients_use_the_query_or_the_cookie(token_server) -> None:
    with connect(f"{token_server.ws}/ws?token={token('carol')}") as carol, \
            connect(token_server.ws + "/dave", additional_headers={"Cookie": f"improto_token={token('dave')}"}) as dave:
        assert carol.subprotocol is None
        carol.send(json.dumps({"to_user": "dave", "msg": "hi"}))
        got = recv_json(dave)
        assert (got["from_user"], got["msg"]) == ("carol", "hi")


# -- refusals ----------------------------------------------------------------------------

REFUSALS: list[tuple[str, Callable[[], str | None], str, int, str]] = [
    ("missing", lambda: None, "/ws", 401,
     "No token: present a JWT as ?token=, the improto_token cookie or a token.<jwt> subprotocol."),
    ("expired", lambda: token("eve", ttl=-300), "/ws", 401, "The token has expired."),
    ("not-yet-valid", lambda: token("eve", nbf=int(time.time()) + 600), "/ws", 401,
     "The token is not valid yet (its nbf or iat is in the future)."),
    ("tampered", lambda: tokens.tampered(token("eve")), "/ws", 401, "The token's signature is not valid."),
    ("wrong-audience", lambda: tokens.hs256(claims("eve", aud="elsewhere", iss=ISS)), "/ws", 401,
     f"The token's audience (aud) is not '{AUD}'."),
    ("wrong-issuer", lambda: tokens.hs256(claims("eve", aud=AUD, iss="evil")), "/ws", 401,
     f"The token's issuer (iss) is not '{ISS}'."),
    ("alg-none", lambda: tokens.unsigned(claims("eve", aud=AUD, iss=ISS)), "/ws", 401,
     "The token is signed with 'none'; this server accepts HS256 only."),
    ("nickname-mismatch", lambda: token("eve"), "/ws/alice", 403,
     "The token is for 'eve', not for the nickname in the URL."),
]


@pytest.mark.parametrize("make_token, path, status, reason",
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_as_the_client_sees_them_while_others_keep_chatting(
    token_server, make_token, path: str, status: int, reason: str
) -> None:
    presented = make_token()
    query = f"?token={presented}" if presented else ""
    with chat(token_server, "alice") as alice, chat(token_server, "bob") as bob:
        # Without improto.v1: the handshake fails with an HTTP status.
        answer = raw_handshake(token_server, path + query)
        assert answer.split(b"\r\n")[0] == f"HTTP/1.1 {status} {reason}".encode()
        # With improto.v1 (as browsers, which cannot read that status): 101, then 44xx.
        with connect(token_server.ws + path + query, subprotocols=[NATIVE]) as refused:
            assert refused.subprotocol == NATIVE
            with pytest.raises(ConnectionClosed) as closed:
                refused.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (status + 4000, reason)
        still_chatting(alice, bob, f"still here after {status}")
    assert token_server.process.poll() is None


def test_tokens_never_reach_the_log(token_server) -> None:
    refused = token("eve", ttl=-300)
    raw_handshake(token_server, f"/ws?token={refused}")
    good = token("grace")
    with connect(f"{token_server.ws}/ws?token={good}", subprotocols=[NATIVE]) as ws:
        recv_json(ws)
    log = wait_for_log(token_server, "The token has expired.")
    assert refused not in log and good not in log
    assert refused.split(".")[2] not in log


# -- the groups claim --------------------------------------------------------------------


def test_the_groups_claim_limits_joins(token_server) -> None:
    ticket = token("ivan", groups=["dev"])
    with connect(token_server.ws + "/ws", subprotocols=[NATIVE, "token." + ticket]) as ivan:
        assert until(ivan, "welcome")["groups"] == ["lobby"]
        ivan.send(json.dumps({"type": "join", "group": "dev", "id": "1"}))
        assert until(ivan, "ack") == {"type": "ack", "id": "1"}
        ivan.send(json.dumps({"type": "join", "group": "ops", "id": "2"}))
        error = until(ivan, "error")
        assert (error["code"], error["id"], error["reason"]) == ("not_allowed", "2", "You may not join group 'ops'.")
        ivan.send(json.dumps({"type": "send", "group": "dev", "msg": "still in", "id": "3"}))
        assert until(ivan, "ack")["id"] == "3"


# -- public keys, JWKS, the minting command, bad options ---------------------------------


def test_rs256_public_key_mode_refuses_the_hs256_confusion_attack(tmp_path) -> None:
    private = tokens.rsa_key()
    pem = tokens.public_pem(private)
    server = start_server("--auth-public-key", tokens.write(tmp_path, "pub.pem", pem))
    try:
        good = jwt.encode(claims("rita"), private, algorithm="RS256")
        with connect(server.ws + "/ws", subprotocols=[NATIVE, "token." + good]) as rita:
            assert recv_json(rita)["user"] == "rita"
            forged = tokens.hmac_with(claims("mallory"), pem)
            answer = raw_handshake(server, f"/ws?token={forged}")
            assert answer.split(b"\r\n")[0] == \
                b"HTTP/1.1 401 The token is signed with 'HS256'; this server accepts RS256 only."
            rita.send(json.dumps({"type": "who", "group": "lobby", "id": "w"}))
            assert until(rita, "who")["users"] == ["rita"]
        assert "Token mode: identities are verified JWTs (RS256 public key from" in server.log()
    finally:
        server.stop()


def test_jwks_mode_picks_the_key_by_kid(tmp_path) -> None:
    first, second = tokens.ec_key(), tokens.rsa_key()
    document = {"keys": [tokens.jwk(first, "2026-a"), tokens.jwk(second, "2026-b")]}
    server = start_server("--auth-jwks", tokens.write(tmp_path, "jwks.json", json.dumps(document)))
    try:
        for key, alg, kid, sub in ((first, "ES256", "2026-a", "ed"), (second, "RS256", "2026-b", "ro")):
            signed = jwt.encode(claims(sub), key, algorithm=alg, headers={"kid": kid})
            with connect(f"{server.ws}/ws?token={signed}", subprotocols=[NATIVE]) as ws:
                assert recv_json(ws)["user"] == sub
        swapped = jwt.encode(claims("x"), first, algorithm="ES256", headers={"kid": "2026-b"})
        assert raw_handshake(server, f"/ws?token={swapped}").startswith(b"HTTP/1.1 401 ")
    finally:
        server.stop()


def test_the_improto_token_command_mints_what_the_server_accepts(token_server, secret_file) -> None:
    command = Path(sys.executable).with_name("improto-token")
    assert command.exists(), "the improto-token console script is not installed"
    minted = subprocess.run(
        [str(command), "--secret-file", secret_file, "--sub", "mia", "--ttl", "120",
         "--aud", AUD, "--iss", ISS],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    with connect(token_server.ws + "/ws", subprotocols=[NATIVE, "token." + minted]) as mia:
        assert recv_json(mia)["user"] == "mia"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--auth-secret", "/nonexistent/s.key"], "twistd improto: cannot read the secret file"),
        (["--auth-audience", "chat"], "twistd improto: --auth-audience needs token mode"),
        (["--auth-public-key", "/etc/hostname"], "twistd improto: cannot read the public key file"),
    ],
)
def test_bad_auth_options_fail_with_a_short_error(tmp_path, args, message) -> None:
    if args[0] == "--auth-public-key":
        args = [args[0], tokens.write(tmp_path, "pub.pem", b"garbage")]
        message = "is not a PEM public key"
    result = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "improto", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output and "Traceback" not in output
