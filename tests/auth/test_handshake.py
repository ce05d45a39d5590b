"""TokenMode and OpenMode at the handshake: where the token is, and who it makes you."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import attrs
import pytest

from improto.auth import OPEN_MODE, AuthRefusal, Identity, TokenMode, TokenVerifier
from improto.auth.keys import Keys, PinnedKey
from improto.protocol.codec import ProtocolError
from tests.auth.tokens import SECRET, claims, hs256

MODE = TokenMode(TokenVerifier(Keys((PinnedKey(SECRET, ("HS256",)),), "test secret")))


@attrs.define
class Request:
    """The parts of Autobahn's ConnectionRequest an authenticator reads."""

    path: str = "/ws"
    params: dict[str, list[str]] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)
    protocols: list[str] = attrs.field(factory=list)
    peer: str = "tcp:127.0.0.1:5555"


def refusal(request: Any) -> AuthRefusal:
    with pytest.raises(AuthRefusal) as info:
        MODE.identify(request)
    return info.value


ALICE = hs256(claims("alice"))


@pytest.mark.parametrize(
    "request_",
    [
        Request(protocols=["improto.v1", "token." + ALICE]),
        Request(protocols=["bearer." + ALICE, "improto.v1"]),
        Request(params={"token": [ALICE]}),
        Request(headers={"cookie": f"theme=dark; improto_token={ALICE}; x=1"}),
        Request(headers={"cookie": f"theme=dark, improto_token={ALICE}"}),
    ],
    ids=["subprotocol-token", "subprotocol-bearer", "query", "cookie", "cookie-joined-headers"],
)
def test_the_token_is_found_in_each_place(request_: Request) -> None:
    assert MODE.identify(request_) == Identity("alice", None)


def test_the_subprotocol_wins_over_the_query_and_the_cookie() -> None:
    bob = hs256(claims("bob"))
    request = Request(protocols=["token." + bob], params={"token": [ALICE]},
                      headers={"cookie": f"improto_token={ALICE}"})
    assert MODE.identify(request).user == "bob"
    assert MODE.identify(attrs.evolve(request, protocols=[])).user == "alice"


def test_no_token_is_401() -> None:
    got = refusal(Request(protocols=["improto.v1", "token."], headers={"cookie": "improto_token="}))
    assert (got.status, got.close_code) == (401, 4401)
    assert got.reason.startswith("No token")
    assert len(got.reason.encode()) <= 123  # fits a close frame


def test_a_bad_token_is_401_with_the_verifier_reason() -> None:
    got = refusal(Request(params={"token": [hs256(claims(ttl=-300))]}))
    assert (got.status, got.reason) == (401, "The token has expired.")


@pytest.mark.parametrize("path", ["/ws", "/ws/", "/", "/ws/alice", "/alice", "/chat/ws/alice"])
def test_paths_that_agree_with_the_token(path: str) -> None:
    assert MODE.identify(Request(path=path, params={"token": [ALICE]})).user == "alice"


def test_a_unicode_nickname_in_the_url_matches_its_token() -> None:
    token = hs256(claims("小二"))
    assert MODE.identify(Request(path="/ws/" + quote("小二"), params={"token": [token]})).user == "小二"


@pytest.mark.parametrize("path", ["/ws/bob", "/bob", "/ws/Alice", "/ws/%FF", "/ws/alice%0D%0A"])
def test_a_url_nickname_that_disagrees_is_403(path: str) -> None:
    got = refusal(Request(path=path, params={"token": [ALICE]}))
    assert (got.status, got.close_code) == (403, 4403)
    assert got.reason == "The token is for 'alice', not for the nickname in the URL."


def test_the_http_reason_is_one_ascii_line() -> None:
    token = hs256(claims("小二"))
    denial = refusal(Request(path="/ws/bob", params={"token": [token]})).http_denial()
    assert denial.code == 403
    assert denial.reason.isascii() and "\r" not in denial.reason and "\n" not in denial.reason


def test_the_groups_claim_becomes_the_allowed_groups() -> None:
    token = hs256(claims("alice", groups=["dev"]))
    assert MODE.identify(Request(params={"token": [token]})).groups == {"dev", "lobby"}


def test_open_mode_believes_the_url() -> None:
    assert OPEN_MODE.identify(Request(path="/ws/" + quote("小二"), params={"token": [ALICE]})) == \
        Identity("小二", None)
    with pytest.raises(ProtocolError):
        OPEN_MODE.identify(Request(path="/ws/%FF"))
    assert not OPEN_MODE.verified and MODE.verified


def test_refusals_are_logged_without_the_token(caplog_events) -> None:
    refusal(Request(path="/ws/bob", params={"token": [ALICE]}))
    refusal(Request(params={"token": [hs256(claims(ttl=-300))]}))
    logged = [e for e in caplog_events if "Refused connection" in e.get("log_format", "")]
    assert [e["status"] for e in logged] == [403, 401]
    assert all(ALICE not in repr(e) for e in logged)
