"""
The chat page and the seed pages in real headless Chromium against a real
``twistd improto`` subprocess.

Needs Debian's Chromium at /usr/bin/chromium and the ``playwright`` package
(never ``playwright install``); without Chromium these tests fail.
Screenshots land in each test's pytest tmp dir. Every test that drives
Chromium is marked ``slow``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import browser_fixture
from tests.browser_fixture import TIMEOUT_MS, Page, RunningServer, expect
from tests.serverproc import start_server

# The shared fixtures, made this module's own.
browser = browser_fixture.browser
improto_server = browser_fixture.improto_server


SEED_PAGES = Path(__file__).parent / "fixtures" / "seed_pages"
SEED_ADDRESS = "127.0.0.1:5000"
DESKTOP = {"width": 1180, "height": 740}


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Page]]:
    """Opens pages in fresh browser contexts; closes them and checks for JS errors."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(viewport: dict[str, int] = DESKTOP) -> Page:
        context = browser.new_context(viewport=viewport, locale="en-US")
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors: {errors}"


# -- the improto page -----------------------------------------------------------------


def open_chat(new_page: Callable[..., Page], server: RunningServer, nick: str, **kw: Any) -> Page:
    page = new_page(**kw)
    page.goto(server.url + "/")
    page.get_by_test_id("nickname-input").fill(nick)
    page.get_by_test_id("connect-button").click()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    return page


def messages(page: Page, kind: str | None = None, sender: str | None = None) -> Any:
    selector = "[data-testid=message]"
    if kind:
        selector += f"[data-kind={kind}]"
    if sender:
        selector += f'[data-from="{sender}"]'
    return page.get_by_test_id("message-list").locator(selector)


def texts(page: Page, kind: str | None = None, sender: str | None = None) -> Any:
    return messages(page, kind, sender).get_by_test_id("message-text")


def send(page: Page, text: str) -> None:
    box = page.get_by_test_id("message-input")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def member(page: Page, name: str) -> Any:
    return page.get_by_test_id("member-list").locator(f'[data-testid=member][data-name="{name}"]')


def conv_item(page: Page, kind: str, name: str) -> Any:
    return page.locator(f'[data-testid={kind}-item][data-name="{name}"]')


@pytest.mark.slow
def test_two_users_group_private_presence(
    new_page: Callable[..., Page], improto_server: RunningServer, tmp_path: Path
) -> None:
    alice = open_chat(new_page, improto_server, "alice")
    xiaoer = open_chat(new_page, improto_server, "小二")
    expect(alice.get_by_test_id("me-name")).to_have_text("alice")
    expect(alice.get_by_test_id("conv-title")).to_have_text("# lobby")

    # Presence: each sees both in the lobby's online list.
    for page in (alice, xiaoer):
        expect(member(page, "alice")).to_be_visible()
        expect(member(page, "小二")).to_be_visible()
    expect(messages(alice, "system").filter(has_text="小二 is online")).to_have_count(1)

    # Lobby messages, exact text both ways; own ones are acked.
    hello = "hello 小二 <b>not bold</b> & 'quotes'"
    send(alice, hello)
    expect(texts(xiaoer, "other", "alice")).to_have_text([hello])
    own = messages(alice, "own")
    expect(own).to_have_count(1)
    expect(own.first).to_have_attribute("data-status", "delivered")
    expect(xiaoer.get_by_test_id("message-list").locator("b")).to_have_count(0)
    send(xiaoer, "你好 alice\n第二行")
    expect(texts(alice, "other", "小二")).to_have_text(["你好 alice\n第二行"])

    # Private: alice clicks 小二 in the online list.
    member(alice, "小二").click()
    expect(alice.get_by_test_id("conv-title")).to_have_text("小二")
    expect(alice.get_by_test_id("conv-sub")).to_have_text("online")
    send(alice, "a secret for 小二")
    expect(messages(alice, "own").last).to_have_attribute("data-status", "delivered")
    # 小二 is still looking at the lobby: an unread badge on the new private chat.
    item = conv_item(xiaoer, "private", "alice")
    expect(item.get_by_test_id("unread")).to_have_text("1")
    expect(texts(xiaoer).filter(has_text="secret")).to_have_count(0)
    item.get_by_role("button", name="Open chat with alice").click()
    expect(xiaoer.get_by_test_id("conv-title")).to_have_text("alice")
    expect(texts(xiaoer, "other", "alice")).to_have_text(["a secret for 小二"])
    expect(item.get_by_test_id("unread")).to_have_count(0)
    send(xiaoer, "收到")
    expect(texts(alice, "other", "小二")).to_have_text(["收到"])
    # ... and the lobby of neither shows the private messages.
    conv_item(xiaoer, "group", "lobby").get_by_role("button").first.click()
    expect(texts(xiaoer).filter(has_text="secret")).to_have_count(0)

    # Script in a message is text, never markup.
    xss = '<img src=x onerror="window.__pwned=1">'
    send(xiaoer, xss)
    conv_item(alice, "group", "lobby").get_by_role("button").first.click()
    expect(texts(alice, "other", "小二").last).to_have_text(xss)
    assert alice.evaluate("() => window.__pwned") is None
    expect(alice.get_by_test_id("message-list").locator("img")).to_have_count(0)

    # 小二 closes the tab: alice sees it go offline.
    xiaoer.context.close()
    expect(member(alice, "小二")).to_have_count(0)
    expect(messages(alice, "system").filter(has_text="小二 went offline")).to_have_count(1)
    conv_item(alice, "private", "小二").get_by_role("button").first.click()
    expect(alice.get_by_test_id("conv-sub")).to_have_text("offline")
    expect(messages(alice, "system").filter(has_text="小二 went offline")).to_have_count(1)
    # A private message to someone offline who was here is stored for them (the inbox).
    send(alice, "are you there?")
    expect(messages(alice, "own").last).to_have_attribute("data-status", "stored")

    alice.screenshot(path=str(tmp_path / "chat-private.png"))
    conv_item(alice, "group", "lobby").get_by_role("button").first.click()
    alice.screenshot(path=str(tmp_path / "chat-lobby.png"))
    print("screenshots:", tmp_path)


@pytest.mark.slow
def test_groups_unread_and_join_errors(
    new_page: Callable[..., Page], improto_server: RunningServer
) -> None:
    bob = open_chat(new_page, improto_server, "bob")
    carol = open_chat(new_page, improto_server, "carol")
    for page in (bob, carol):
        page.get_by_test_id("join-group-input").fill("开发组")
        page.get_by_test_id("join-group-button").click()
        expect(page.get_by_test_id("conv-title")).to_have_text("# 开发组")
        expect(member(page, page.get_by_test_id("me-name").inner_text())).to_be_visible()
    expect(member(bob, "carol")).to_be_visible()
    expect(messages(bob, "system").filter(has_text="carol joined")).to_have_count(1)

    carol.get_by_test_id("join-group-input").fill("other")
    carol.get_by_test_id("join-group-button").click()
    expect(carol.get_by_test_id("conv-title")).to_have_text("# other")
    send(bob, "standup in 5")
    badge = conv_item(carol, "group", "开发组").get_by_test_id("unread")
    expect(badge).to_have_text("1")
    expect(texts(bob, "own")).to_have_text(["standup in 5"])
    expect(messages(bob, "own").last).to_have_attribute("data-status", "delivered")
    # Messages to a group only reach its members: not the lobby.
    conv_item(carol, "group", "lobby").get_by_role("button").first.click()
    expect(texts(carol).filter(has_text="standup")).to_have_count(0)
    conv_item(carol, "group", "开发组").get_by_role("button").first.click()
    expect(texts(carol, "other", "bob")).to_have_text(["standup in 5"])
    expect(badge).to_have_count(0)

    # carol leaves: bob sees it, and the group disappears from carol's list.
    conv_item(carol, "group", "开发组").get_by_test_id("leave-group-button").click()
    expect(conv_item(carol, "group", "开发组")).to_have_count(0)
    expect(carol.get_by_test_id("conv-title")).to_have_text("# lobby")
    expect(messages(bob, "system").filter(has_text="carol left")).to_have_count(1)
    expect(member(bob, "carol")).to_have_count(0)

    # A bad group name is refused by the server; the reason is shown.
    carol.get_by_test_id("join-group-input").fill("a/b")
    carol.get_by_test_id("join-group-button").click()
    error = messages(carol, "error")
    expect(error).to_have_count(1)
    expect(error).to_contain_text("Could not join 'a/b'")
    expect(error).to_have_attribute("data-code", "bad_name")
    expect(conv_item(carol, "group", "a/b")).to_have_count(0)


@pytest.mark.slow
def test_refused_nickname_and_remembered_name(
    new_page: Callable[..., Page], improto_server: RunningServer
) -> None:
    page = new_page()
    page.goto(improto_server.url + "/")
    page.get_by_test_id("nickname-input").fill("improto")
    page.get_by_test_id("connect-button").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("reserved")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "offline")

    page.get_by_test_id("nickname-input").fill("dora")
    page.get_by_test_id("connect-button").click()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    page.get_by_test_id("disconnect-button").click()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "offline")
    page.reload()
    expect(page.get_by_test_id("nickname-input")).to_have_value("dora")


@pytest.mark.slow
def test_reconnects_and_rejoins_after_server_restart(
    new_page: Callable[..., Page], tmp_path: Path
) -> None:
    server = start_server()
    try:
        erin = open_chat(new_page, server, "erin")
        erin.get_by_test_id("join-group-input").fill("ops")
        erin.get_by_test_id("join-group-button").click()
        expect(member(erin, "erin")).to_be_visible()
        send(erin, "before")
        expect(messages(erin, "own").last).to_have_attribute("data-status", "delivered")

        server.stop()
        state = erin.get_by_test_id("conn-state")
        expect(state).to_have_attribute("data-state", "reconnecting")
        expect(state).to_have_text(re.compile(r"^reconnecting in \d+s$"))
        expect(erin.get_by_test_id("send-button")).to_be_disabled()
        erin.screenshot(path=str(tmp_path / "reconnecting.png"))

        server = start_server(port=server.port)
        expect(state).to_have_attribute("data-state", "online")
        # Still in #ops (re-joined): a message there is delivered, not refused.
        expect(erin.get_by_test_id("conv-title")).to_have_text("# ops")
        send(erin, "after")
        expect(messages(erin, "own").last).to_have_attribute("data-status", "delivered")
    finally:
        server.stop()


@pytest.mark.slow
def test_small_screen_layout(
    new_page: Callable[..., Page], improto_server: RunningServer, tmp_path: Path
) -> None:
    page = open_chat(new_page, improto_server, "手机", viewport={"width": 390, "height": 740})
    expect(page.get_by_test_id("group-list")).to_be_hidden()
    send(page, "from a phone")
    expect(messages(page, "own").last).to_have_attribute("data-status", "delivered")
    page.screenshot(path=str(tmp_path / "phone.png"))
    page.get_by_role("button", name="Show conversations").click()
    expect(page.get_by_test_id("group-list")).to_be_visible()
    page.screenshot(path=str(tmp_path / "phone-menu.png"))


# -- the seed pages (003) and the 004 client behaviour ---------------------------------


@pytest.fixture(scope="module")
def seed_site(improto_server: RunningServer) -> Iterator[str]:
    """
    The seed pages, served from a plain HTTP server on 127.0.0.1, with only
    their ws://127.0.0.1:5000/ address changed to the test server's.
    """
    pages = {}
    for path in SEED_PAGES.glob("*.html"):
        html = path.read_text(encoding="utf-8")
        assert html.count(SEED_ADDRESS) == 1, path
        pages["/" + path.name] = html.replace(SEED_ADDRESS, improto_server.host_port).encode()
    base, shutdown = browser_fixture.serve_pages(pages)
    try:
        yield base
    finally:
        shutdown()


def open_seed(new_page: Callable[..., Page], site: str, name: str, nick: str) -> Page:
    """Open a seed page, type a nickname and click 连接服务器."""
    page = new_page()
    page.goto(f"{site}/{name}")
    page.locator("#nickname").fill(nick)
    page.get_by_role("button", name="连接服务器").click()
    # The page shows nothing when connected; its global ``ws`` tells.
    page.wait_for_function("() => ws !== null && ws.readyState === WebSocket.OPEN",
                           timeout=TIMEOUT_MS)
    return page


#: SHA-256 of each seed page's one line in shared/seeds/003_*.txt, so the
#: fixtures are checked even where shared/ is not beside the checkout.
SEED_LINE_SHA256 = {
    "many_people.html": "9b45110286fdfb420f915c4fd3170425099090bebd245d351b145cbe214a624b",
    "single_chat.html": "b560d7556f3ae90cbed8574b8c89a6f6c492c84c81f133b6de9276e4b6d9ef31",
}


def shared_seeds() -> Path:
    """The seeds: ``$IMPROTO_SHARED/seeds``, else ``shared/seeds`` beside the checkout (as in CI)."""
    shared = os.environ.get("IMPROTO_SHARED") or Path(__file__).resolve().parents[3] / "shared"
    return Path(shared) / "seeds"


def test_seed_pages_match_the_recorded_digests() -> None:
    """The fixtures are the seed's one-line pages, with only white space added."""
    for name, digest in SEED_LINE_SHA256.items():
        fixture = (SEED_PAGES / name).read_text(encoding="utf-8")
        collapsed = " ".join(fixture.split())
        assert hashlib.sha256(collapsed.encode()).hexdigest() == digest, name


def test_recorded_digests_are_the_seeds_own() -> None:
    """The digests above are those of the pages in seed 003 itself."""
    folder = shared_seeds()
    seeds = sorted(folder.glob("003_*.txt"))
    if not seeds:
        pytest.skip(
            f"no seed 003 in {folder}: shared/ is not beside this checkout "
            "(CI puts it there); set IMPROTO_SHARED to the shared/ folder to run this"
        )
    lines = [
        line.strip() for line in seeds[0].read_text(encoding="utf-8").splitlines()
        if line.startswith("<!DOCTYPE html>")
    ]
    assert [hashlib.sha256(line.encode()).hexdigest() for line in lines] == list(
        SEED_LINE_SHA256.values()
    )


def seed_say(page: Page, text: str, to: str | None = None) -> None:
    if to is not None:
        page.locator("#sender").fill(to)
    page.locator("#talk").fill(text)
    page.get_by_role("button", name="发送信息").click()


def seed_lines(page: Page, line: str) -> Any:
    return page.locator("#text > div").filter(has_text=re.compile("^" + re.escape(line) + "$"))


@pytest.mark.slow
def test_seed_group_page(new_page: Callable[..., Page], seed_site: str) -> None:
    alice = open_seed(new_page, seed_site, "many_people.html", "alice")
    xiaoer = open_seed(new_page, seed_site, "many_people.html", "小二")
    seed_say(alice, "hello")
    expect(seed_lines(alice, "我 : hello")).to_have_count(1)
    expect(seed_lines(xiaoer, "alice : hello")).to_have_count(1)
    seed_say(xiaoer, "你好，alice")
    expect(seed_lines(alice, "小二 : 你好，alice")).to_have_count(1)
    # Nothing else (no welcome, presence or echo) reached the seed pages.
    expect(alice.locator("#text > div")).to_have_count(2)
    expect(xiaoer.locator("#text > div")).to_have_count(2)


@pytest.mark.slow
def test_seed_private_page(new_page: Callable[..., Page], seed_site: str) -> None:
    zhang = open_seed(new_page, seed_site, "single_chat.html", "张三")
    li = open_seed(new_page, seed_site, "single_chat.html", "李四")
    seed_say(zhang, "悄悄话", to="李四")
    expect(seed_lines(li, "张三 : 悄悄话")).to_have_count(1)
    seed_say(li, "收到", to="张三")
    expect(seed_lines(zhang, "李四 : 收到")).to_have_count(1)
    # An unknown recipient: a readable line from improto instead of nothing.
    seed_say(zhang, "anyone?", to="nobody")
    error = zhang.locator("#text > div").filter(has_text=re.compile("^improto : "))
    expect(error).to_have_count(1)
    expect(error).to_contain_text("nobody")
    expect(error).to_contain_text("not online")
    expect(li.locator("#text > div")).to_have_count(2)


@pytest.mark.slow
def test_seed_pages_talk_with_the_new_page(
    new_page: Callable[..., Page], improto_server: RunningServer, seed_site: str
) -> None:
    group = open_seed(new_page, seed_site, "many_people.html", "gina")
    single = open_seed(new_page, seed_site, "single_chat.html", "小明")
    frank = open_chat(new_page, improto_server, "frank")
    expect(member(frank, "gina")).to_be_visible()
    expect(member(frank, "小明")).to_be_visible()

    seed_say(group, "hi from the old page")
    expect(texts(frank, "other", "gina")).to_have_text(["hi from the old page"])
    send(frank, "hi gina")
    expect(seed_lines(group, "frank : hi gina")).to_have_count(1)

    seed_say(single, "私聊 frank", to="frank")
    item = conv_item(frank, "private", "小明")
    expect(item.get_by_test_id("unread")).to_have_text("1")
    item.get_by_role("button").first.click()
    expect(texts(frank, "other", "小明")).to_have_text(["私聊 frank"])
    send(frank, "回复 小明")
    expect(seed_lines(single, "frank : 回复 小明")).to_have_count(1)
    expect(messages(frank, "own").last).to_have_attribute("data-status", "delivered")


PLAIN_CLIENT = """
async ([url, nick]) => {
  const ws = new WebSocket(url + "/ws/" + encodeURIComponent(nick));
  window.got = [];
  ws.onmessage = (e) => window.got.push(e.data);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  window.ws = ws;
  return ws.protocol;
}
"""


@pytest.mark.slow
def test_004_style_plain_text_client(
    new_page: Callable[..., Page], improto_server: RunningServer
) -> None:
    """The 004 page sent raw text to /ws/<nick> and read {sender, msg}."""
    ws_base = "ws://" + improto_server.host_port
    zhang = new_page()
    zhang.goto(improto_server.url + "/healthz")
    assert zhang.evaluate(PLAIN_CLIENT, [ws_base, "老张"]) == ""
    wang = new_page()
    wang.goto(improto_server.url + "/healthz")
    wang.evaluate(PLAIN_CLIENT, [ws_base, "老王"])
    hana = open_chat(new_page, improto_server, "hana")
    expect(member(hana, "老张")).to_be_visible()

    zhang.evaluate("() => ws.send('just text, not JSON 你好')")
    expect(texts(hana, "other", "老张")).to_have_text(["just text, not JSON 你好"])
    wang.wait_for_function("() => got.length >= 1", timeout=TIMEOUT_MS)
    frame = json.loads(wang.evaluate("() => got[0]"))
    assert frame["sender"] == "老张"
    assert frame["msg"] == "just text, not JSON 你好"

    zhang.evaluate("""() => ws.send(JSON.stringify({to_user: "老王", msg: "DSB"}))""")
    wang.wait_for_function("() => got.length >= 2", timeout=TIMEOUT_MS)
    frame = json.loads(wang.evaluate("() => got[1]"))
    assert (frame["sender"], frame["msg"]) == ("老张", "DSB")

    send(hana, "hello plain clients")
    wang.wait_for_function("() => got.length >= 3", timeout=TIMEOUT_MS)
    frame = json.loads(wang.evaluate("() => got[2]"))
    assert (frame["sender"], frame["msg"]) == ("hana", "hello plain clients")
    # The plain clients never saw native-only frames (welcome, presence, acks).
    kinds = {json.loads(f).get("type") for f in wang.evaluate("() => got")}
    assert kinds == {"message", "private"}, kinds
