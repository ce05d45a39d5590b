"""
improto-chat in a real terminal (a pty, its screen read through pyte)
against a real ``twistd -n improto``: two users chat in a group and in
private, see presence, and keep chatting across a server restart; on
Redis, a client whose node restarts catches up on what it missed, once.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from tests.client.chat_program import chat_command
from tests.client.terminal import Terminal
from tests.serverproc import ServerProcess, start_server


def open_chat(url: str, *args: str) -> Terminal:
    argv, env = chat_command(url, *args)
    # Outside the checkout, so the installed package runs.
    return Terminal(argv, env=env, cwd=tempfile.gettempdir())


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def after(text: str, marker: str) -> str:
    """What ``text`` shows after the last ``marker``."""
    return text.rpartition(marker)[2]


@pytest.mark.slow
def test_two_users_chat_and_survive_a_server_restart(
    server: ServerProcess, terminals: list[Terminal]
) -> None:
    alice = open_chat(server.ws_url("alice"))
    terminals.append(alice)
    alice.wait_text("connected as alice; in lobby.")
    bob = open_chat(server.ws_url("bob"))
    terminals.append(bob)
    bob.wait_text("connected as bob")
    alice.wait_text("-- bob is online")

    alice.line("/join dev")
    alice.wait_text("joined dev; now talking in it")
    bob.line("/join dev")
    bob.wait_text("joined dev")
    alice.wait_text("-- bob joined dev")

    bob.line("the build is green again, and this line is long enough that it has to wrap "
             "on an eighty-column terminal")
    seen = alice.wait_text("[dev] bob: the build is green")
    assert re.search(r"\d\d:\d\d \[dev\] bob: the build is green again.*\n {6}\S", seen)
    assert all(len(row) <= 80 for row in alice.screen())
    bob.wait_text("[dev] bob: the build is green")  # acked: now in bob's scrollback too

    alice.line("/msg bob psst, lunch?")
    bob.wait_text("[private] alice: psst, lunch?")
    alice.wait_text("[private → bob] alice: psst, lunch?")
    alice.line("/who dev")
    alice.wait_text("-- in dev (2): alice, bob")
    alice.line("/msg nobody hello?")
    alice.wait_text("✗ failed: unknown_user:")
    # The toolbar is redrawn after the line above: wait for it, do not sample it.
    alice.wait_for(lambda _: alice.screen()[-1].startswith("online as alice | in lobby dev"),
                   "the toolbar 'online as alice | in lobby dev'")

    server.stop()
    for terminal in (alice, bob):
        terminal.wait_text("disconnected (close 1001")
    alice.line("anyone there?")
    alice.wait_text("!! not connected (")
    restarted = start_server("--rate", "0", port=server.port)
    try:
        alice.wait_text("reconnected as alice; re-joining dev")
        bob.wait_text("reconnected as bob; re-joining dev")
        # Whichever re-joined second is announced to the other: then both are in dev.
        alice.wait_for(
            lambda _: "bob joined dev" in after(alice.text(), "reconnected as alice")
            or "alice joined dev" in after(bob.text(), "reconnected as bob"),
            "both back in dev",
        )
        bob.line("back again")
        alice.wait_text("[dev] bob: back again")
        alice.line("/who")
        alice.wait_for(lambda text: "-- in dev (2): alice, bob" in after(text, "reconnected"),
                       "who after the restart")
        bob.line("/quit")
        assert bob.wait_exit() == 0
        alice.wait_text("-- bob went offline")
        alice.type("\x04")  # Ctrl-D
        assert alice.wait_exit() == 0
    finally:
        restarted.stop()


@pytest.mark.slow
def test_a_reconnect_resumes_what_was_missed_exactly_once(
    redis_url: str, redis_prefix: str, terminals: list[Terminal]
) -> None:
    """Two nodes on one Redis: alice's node restarts while bob, on the other, talks on."""
    backend = f"{redis_url}?prefix={redis_prefix}"
    one = start_server("--rate", "0", "--backend", backend)
    two = start_server("--rate", "0", "--backend", backend)
    try:
        alice = open_chat(one.ws_url("alice"))
        terminals.append(alice)
        alice.wait_text("connected as alice; in lobby.")
        bob = open_chat(two.ws_url("bob"))
        terminals.append(bob)
        bob.wait_text("connected as bob")
        alice.line("/join dev")
        alice.wait_text("joined dev; now talking in it")
        bob.line("/join dev")
        bob.wait_text("joined dev")
        bob.line("first")
        alice.wait_text("[dev] bob: first")
        bob.line("/msg alice psst")
        alice.wait_text("[private] bob: psst")  # alice has now seen her private stream too

        one.stop()
        alice.wait_text("disconnected (close 1001")
        bob.line("second")
        bob.wait_text("[dev] bob: second")  # acked: stored and published, alice not there
        bob.line("third")
        bob.wait_text("[dev] bob: third")
        bob.line("/msg alice while you were away")
        bob.wait_text("while you were away ✓ stored for alice (offline)")

        one = start_server("--rate", "0", "--backend", backend, port=one.port)
        alice.wait_text("reconnected as alice; re-joining dev")
        alice.wait_text("[dev] bob: third")
        alice.wait_text("[private] bob: while you were away")
        bob.line("live again")
        seen = alice.wait_text("[dev] bob: live again")
        since = after(seen, "reconnected as alice")
        # What was missed came before the live message, and nothing twice.
        assert since.index("bob: second") < since.index("bob: third") < since.index("bob: live again")
        for text in ("[dev] bob: first", "[dev] bob: second", "[dev] bob: third",
                     "[private] bob: psst", "[private] bob: while you were away"):
            assert seen.count(text) == 1, (text, seen)
        assert "were lost" not in seen and "not confirmed" not in seen
    finally:
        one.stop()
        two.stop()


@pytest.fixture
def refusing_server() -> Iterator[tuple[str, list[Any]]]:
    """A WebSocket server that takes improto.v1 and then closes with 4401."""
    seen: list[Any] = []

    def handler(ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        seen.append((request.path, request.headers.get("Sec-WebSocket-Protocol"), ws.subprotocol))
        ws.close(4401, "token expired")

    with serve(handler, "127.0.0.1", 0, subprotocols=["improto.v1"]) as ws_server:  # type: ignore[list-item]
        thread = threading.Thread(target=ws_server.serve_forever, daemon=True)
        thread.start()
        port = ws_server.socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}", seen
        ws_server.shutdown()


def test_an_auth_close_is_shown_and_final(
    refusing_server: tuple[str, list[Any]], terminals: list[Terminal]
) -> None:
    base, seen = refusing_server
    chat = open_chat(f"{base}/ws/alice", "--token", "abc.DEF-123_x")
    terminals.append(chat)
    chat.wait_text("connection refused for good (close 4401, not authenticated, token expired);")
    assert chat.wait_exit() == 1
    # The token went both ways, improto.v1 was chosen, and there was no second attempt.
    assert seen == [("/ws/alice?token=abc.DEF-123_x", "improto.v1, bearer.abc.DEF-123_x", "improto.v1")]


def test_a_handshake_refused_with_401_is_final(terminals: list[Terminal]) -> None:
    attempts: list[str] = []

    def refuse(connection: ServerConnection, request: Any) -> Any:
        attempts.append(request.path)
        return connection.respond(401, "no token\n")

    with serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as ws_server:
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        port = ws_server.socket.getsockname()[1]
        chat = open_chat(f"ws://127.0.0.1:{port}/ws/alice")
        terminals.append(chat)
        chat.wait_text("!! connection refused for good (HTTP 401 Unauthorized); not retrying")
        assert chat.wait_exit() == 1
        ws_server.shutdown()
    assert attempts == ["/ws/alice"]
