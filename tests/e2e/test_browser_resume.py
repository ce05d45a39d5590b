"""
The chat page resumes: it keeps the last seq per stream in sessionStorage,
so a page that reloads (or reconnects) gets what was sent while it was
away, once, and a private message to it meanwhile was stored for it.
Headless Chromium against a real ``twistd improto``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import browser_fixture
from tests.browser_fixture import Page, expect
from tests.e2e.test_browser import conv_item, member, messages, new_page, open_chat, send, texts
from tests.serverproc import start_server

browser = browser_fixture.browser
improto_server = browser_fixture.improto_server
__all__ = ["browser", "improto_server", "new_page"]

pytestmark = pytest.mark.slow


def relogin(page: Page) -> None:
    """After a reload: the page remembers the nickname; connect again."""
    expect(page.get_by_test_id("nickname-input")).not_to_have_value("")
    page.get_by_test_id("connect-button").click()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")


def test_a_reloaded_page_shows_what_was_sent_while_it_was_away(
    new_page: Callable[..., Page], improto_server: Any
) -> None:
    alice = open_chat(new_page, improto_server, "alice")
    bob = open_chat(new_page, improto_server, "bob")
    send(alice, "before the reload")
    expect(texts(bob, "other", "alice")).to_have_text(["before the reload"])
    positions = bob.evaluate("sessionStorage.getItem('improto.positions.bob')")
    assert positions == '{"group:lobby":1}'

    # bob reloads; until he is back, alice goes on talking, and writes to him.
    bob.reload()
    expect(bob.get_by_test_id("connect-button")).to_be_visible()
    send(alice, "while you were away 1")
    send(alice, "while you were away 2")
    expect(messages(alice, "own").last).to_have_attribute("data-status", "delivered")
    relogin(bob)
    expect(texts(bob, "other", "alice")).to_have_text(["while you were away 1", "while you were away 2"])
    # The message bob had already seen is not shown again.
    expect(texts(bob).filter(has_text="before the reload")).to_have_count(0)

    # A private message to bob while he is gone is stored, and he gets it then.
    member(alice, "bob").click()
    expect(alice.get_by_test_id("conv-title")).to_contain_text("bob")
    bob.reload()
    expect(bob.get_by_test_id("connect-button")).to_be_visible()
    send(alice, "psst, stored for you")
    expect(messages(alice, "own").last).to_have_attribute("data-status", "stored")
    relogin(bob)
    conv_item(bob, "private", "alice").get_by_role("button").first.click()
    expect(texts(bob, "other", "alice")).to_have_text(["psst, stored for you"])


def test_a_page_resumes_after_the_server_comes_back(
    new_page: Callable[..., Page], redis_url: str, redis_prefix: str
) -> None:
    """Two nodes on Redis: when bob's node dies, his page reconnects and misses nothing."""
    backend = f"{redis_url}?prefix={redis_prefix}"
    one = start_server("--backend", backend, "--allowed-origins", "*")
    two = start_server("--backend", backend, "--allowed-origins", "*")
    try:
        alice = open_chat(new_page, two, "alice")
        bob = open_chat(new_page, one, "bob")
        send(alice, "first")
        expect(texts(bob, "other", "alice")).to_have_text(["first"])
        one.stop()
        expect(bob.get_by_test_id("conn-state")).not_to_have_attribute("data-state", "online")
        send(alice, "second")
        send(alice, "third")
        expect(messages(alice, "own").last).to_have_attribute("data-status", "delivered")
        one = start_server("--backend", backend, "--allowed-origins", "*", port=one.port)
        expect(bob.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
        expect(texts(bob, "other", "alice")).to_have_text(["first", "second", "third"])
    finally:
        one.stop()
        two.stop()
