"""
The chat page in token mode, in real headless Chromium against
``twistd improto --auth-secret FILE``: tokens from the link's ``#token=``
fragment or the login form, two users chatting, and a bad or expired
token refused with a message a person can read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import browser_fixture
from tests.auth import tokens
from tests.auth.tokens import claims
from tests.browser_fixture import Page, expect
from tests.e2e import test_browser
from tests.e2e.test_browser import member, messages, send, texts
from tests.serverproc import ServerProcess, start_server

browser = browser_fixture.browser
new_page = test_browser.new_page



@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    secret = tokens.write(tmp_path_factory.mktemp("keys"), "s.key", tokens.SECRET)
    server = start_server("--auth-secret", secret)
    try:
        yield server
    finally:
        server.stop()


def open_with_token(new_page: Callable[..., Page], server: ServerProcess, token: str) -> Page:
    page = new_page()
    page.goto(f"{server.url}/#token={token}")
    return page


def online(page: Page, user: str) -> Page:
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    expect(page.get_by_test_id("me-name")).to_have_text(user)
    return page


def test_two_users_chat_with_tokens(new_page, token_server: ServerProcess, tmp_path: Path) -> None:
    alice = online(open_with_token(new_page, token_server, tokens.hs256(claims("alice"))), "alice")
    # The token leaves the address bar as soon as the page has it.
    assert "#token" not in alice.url and "token=" not in alice.url
    # 小二 pastes a token into the login form instead, with no nickname.
    xiaoer = new_page()
    xiaoer.goto(token_server.url + "/")
    xiaoer.get_by_test_id("token-input").fill(tokens.hs256(claims("小二")))
    xiaoer.get_by_test_id("connect-button").click()
    online(xiaoer, "小二")

    for page in (alice, xiaoer):
        expect(member(page, "alice")).to_be_visible()
        expect(member(page, "小二")).to_be_visible()
    send(alice, "hello from a verified alice")
    expect(texts(xiaoer, "other", "alice")).to_have_text(["hello from a verified alice"])
    expect(messages(alice, "own").first).to_have_attribute("data-status", "delivered")
    send(xiaoer, "你好")
    expect(texts(alice, "other", "小二")).to_have_text(["你好"])
    alice.screenshot(path=str(tmp_path / "token-chat.png"))

    # A reload keeps the tab signed in (the token is in this tab's sessionStorage).
    alice.reload()
    online(alice, "alice")


@pytest.mark.parametrize(
    "make_token, shown",
    [
        (lambda: tokens.tampered(tokens.hs256(claims("alice"))),
         "Sign-in refused: The token's signature is not valid."),
        (lambda: tokens.hs256(claims("bob", ttl=-600)), "Sign-in refused: The token has expired."),
        (lambda: "not-a-jwt", "Sign-in refused: The token is not a JWT (header.payload.signature)."),
    ],
    ids=["tampered", "expired", "garbage"],
)
def test_a_wrong_token_is_refused_readably(
    new_page, token_server: ServerProcess, make_token, shown: str, tmp_path: Path
) -> None:
    carol = online(open_with_token(new_page, token_server, tokens.hs256(claims("carol"))), "carol")
    page = open_with_token(new_page, token_server, make_token())
    expect(page.get_by_test_id("login-error")).to_have_text(shown)
    expect(page.get_by_test_id("login")).to_be_visible()
    page.screenshot(path=str(tmp_path / "token-refused.png"))
    # carol was never disturbed.
    expect(carol.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")


def test_a_nickname_that_disagrees_with_the_token_is_not_allowed(new_page, token_server) -> None:
    page = new_page()
    page.goto(token_server.url + "/")
    page.get_by_test_id("nickname-input").fill("mallory")
    page.get_by_test_id("token-input").fill(tokens.hs256(claims("dora")))
    page.get_by_test_id("connect-button").click()
    expect(page.get_by_test_id("login-error")).to_have_text(
        "Not allowed: The token is for 'dora', not for the nickname in the URL.")
    # Without the nickname the same token signs dora in.
    page.get_by_test_id("nickname-input").fill("")
    page.get_by_test_id("connect-button").click()
    online(page, "dora")


def test_without_any_token_the_page_says_why(new_page, token_server) -> None:
    page = new_page()
    page.goto(token_server.url + "/")
    page.get_by_test_id("nickname-input").fill("erin")
    page.get_by_test_id("connect-button").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("Sign-in refused: No token")
