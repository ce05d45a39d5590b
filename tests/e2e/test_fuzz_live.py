"""
Fuzz a live ``twistd -n improto`` with random and mutated frames over real
sockets, while a bystander chats.

The normal suite sends FUZZ_FRAMES=300 frames (a few seconds); the ``fuzz``
tox env sends 20,000, stopping early at FUZZ_SECONDS. A failure prints the
random seed; FUZZ_SEED=<seed> replays the same frames.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from improto.protocol import codec
from tests.protocol.fuzzing import NAMES, POISON, TYPES, browser_json, meant_native
from tests.serverproc import ServerProcess, start_server

FRAMES = int(os.environ.get("FUZZ_FRAMES", "300"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "120"))
TIMEOUT = 5
NATIVE = ["improto.v1"]





class Frames:
    """Random frames: valid ones, mutated ones, poison, garbage and giants."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def value(self, depth: int = 0) -> object:
        r = self.rng
        kind = r.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False, 0, -1, 2**70, 1.5e300, -0.0])
        if kind == 2:
            return "".join(chr(r.choice([r.randrange(32, 127), r.randrange(0x80, 0x3000)]))
                           for _ in range(r.randrange(12)))
        if kind == 3:
            return r.choice(["\ud800", "a\udfff", "小二", "😀", "\u202e"])
        if kind == 4:
            return r.choice(NAMES)
        if kind == 5:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(["msg", "a", "type", "id", "小"]): self.value(depth + 1)
                for _ in range(r.randrange(4))}

    def valid(self) -> str:
        r = self.rng
        if r.random() < 0.3:
            obj: dict = {"username": "x", "msg": self.value()}
            if r.random() < 0.5:
                obj["to_user"] = r.choice(NAMES)
        else:
            obj = {"type": r.choice(TYPES), "group": r.choice(NAMES), "to": r.choice(NAMES),
                   "msg": self.value(), "id": r.choice([None, "1", 7, "x" * 70, [], "\udc00"])}
            for key in list(obj):
                if key != "type" and r.random() < 0.3:
                    del obj[key]
        return json.dumps(obj, ensure_ascii=r.random() < 0.5 or "\\ud" in json.dumps(obj))

    def mutate(self, text: str) -> str:
        r = self.rng
        for _ in range(r.randrange(1, 4)):
            at = r.randrange(len(text) + 1)
            action = r.randrange(3)
            if action == 0:
                text = text[:at] + r.choice(POISON) + text[at:]
            elif action == 1:
                text = text[:at] + text[at + 1:]
            else:
                text = text[:at]
        return text

    def next(self) -> str | bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.35:
            return self.valid()
        if kind < 0.75:
            return self.mutate(self.valid())
        if kind < 0.85:
            return "".join(r.choice(POISON) for _ in range(r.randrange(1, 8)))
        if kind < 0.93:
            return "".join(chr(r.randrange(1, 0xD7FF)) for _ in range(r.randrange(30)))
        if kind < 0.96:
            return bytes(r.randrange(256) for _ in range(r.randrange(20)))
        if kind < 0.99:
            # Deep nesting, under and over the size limit (65536 bytes).
            return '{"type":"send","group":"lobby","id":"deep","msg":' + "[" * r.choice(
                [40, 1000, 60_000, 100_000])
        return "x" * r.choice([65_537, 200_000, 300_000])


def drain(ws: ClientConnection) -> list[str | bytes]:
    out = []
    while True:
        try:
            out.append(ws.recv(timeout=0.05))
        except (TimeoutError, ConnectionClosed):
            return out


def recv_until(ws: ClientConnection, want, deadline: float) -> list[dict]:
    """Frames until one satisfies ``want``; every one must be a valid frame."""
    seen = []
    while time.monotonic() < deadline:
        try:
            frame = browser_json(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            break
        seen.append(frame)
        if want(frame):
            return seen
    raise AssertionError(f"no wanted frame; last seen {seen[-3:]}")


def chat_round(bystander: ClientConnection, seedy: ClientConnection, tag: str) -> None:
    """The bystander (native) and a seed page still talk both ways."""
    deadline = time.monotonic() + TIMEOUT
    bystander.send(json.dumps({"type": "send", "group": "lobby", "msg": tag, "id": tag}))
    recv_until(bystander, lambda f: f.get("id") == tag and f["type"] == "ack", deadline)
    recv_until(seedy, lambda f: f.get("msg") == tag, deadline)
    seedy.send(json.dumps({"to_user": "bystander", "msg": tag + "-back"}))
    recv_until(bystander, lambda f: f.get("msg") == tag + "-back", deadline)


def attacker(stack: ExitStack, server: ServerProcess, which: int) -> ClientConnection:
    """Attacker ``which``: a seed page, a native client (same user) or a 003-URL page."""
    url = server.ws_url("trudy", prefix="/") if which == 2 else server.ws_url("mallory")
    return stack.enter_context(connect(
        url, subprotocols=NATIVE if which == 1 else None, max_queue=None, open_timeout=TIMEOUT
    ))


def test_fuzzing_a_live_server_leaves_it_and_its_users_fine(server: ServerProcess) -> None:
    seed = int(os.environ.get("FUZZ_SEED", str(random.randrange(2**32))))
    print(f"FUZZ_SEED={seed} FUZZ_FRAMES={FRAMES}")
    with ExitStack() as stack:
        fuzz(stack, server, Frames(random.Random(seed)))
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def fuzz(stack: ExitStack, server: ServerProcess, frames: Frames) -> None:
    bystander = stack.enter_context(
        connect(server.ws_url("bystander"), subprotocols=NATIVE, max_queue=None)
    )
    seedy = stack.enter_context(connect(server.ws_url("seedy"), max_queue=None))
    chat_round(bystander, seedy, "before")
    mallory = [attacker(stack, server, which) for which in range(3)]
    meant: set[str] = set()
    reconnects = 0
    stop = time.monotonic() + SECONDS
    sent = 0
    for sent in range(1, FRAMES + 1):
        frame = frames.next()
        if isinstance(frame, str) and meant_native(frame):
            meant.add(frame)
        which = sent % len(mallory)
        try:
            mallory[which].send(frame)
        except ConnectionClosed:
            # A frame over four times the size limit closes with 1009; come back.
            assert mallory[which].close_code in (1009, None), mallory[which].close_code
            mallory[which] = attacker(stack, server, which)
            reconnects += 1
        if sent % 200 == 0:
            for ws in (bystander, seedy):
                for data in drain(ws):
                    check_bystander_frame(data, meant)
            if time.monotonic() > stop:
                break
    print(f"sent {sent} frames, {reconnects} reconnects")

    for ws in mallory:
        for data in drain(ws):
            if isinstance(data, str):
                browser_json(data)
    for ws in (bystander, seedy):
        for data in drain(ws):
            check_bystander_frame(data, meant)
    chat_round(bystander, seedy, "after")

    with connect(server.ws_url("late"), subprotocols=NATIVE) as late:
        assert browser_json(late.recv(timeout=TIMEOUT))["type"] == "welcome"
    with urllib.request.urlopen(f"{server.http}/healthz", timeout=TIMEOUT) as reply:
        assert reply.status == 200
    # Refusals are logged once per (connection, code), not once per frame.
    connections = 3 + reconnects
    assert server.log().count("Refused a frame") <= connections * len(codec.ErrorCode)


def check_bystander_frame(data: str | bytes, meant: set[str]) -> None:
    frame = browser_json(data)
    if frame["type"] == "message":
        msg = frame.get("msg")
        assert not (isinstance(msg, str) and msg in meant), f"a native frame was broadcast: {frame}"


#: Frames found by attacking the server by hand, and the code each gets.
KNOWN_ATTACKS = [
    ('{"type":"private","to":"bystander","msg":"my password",}', "bad_json"),
    ('{"type":5,"to":"bystander","msg":"my password"}', "bad_message"),
    ('{"type":"private","to":"bystander","msg":' + "1" * 5000 + "}", "bad_json"),
    ('{"type":"send","group":"lobby","msg":NaN}', "bad_json"),
    ('{"type":"send","group":"lobby","msg":1e400}', "bad_json"),
    ('{"type":"send","group":"lobby","msg":"\\ud800"}', "bad_message"),
    ('{"type":"private","to":"\\ud800","msg":"x"}', "bad_message"),
    ('{"type":"join","group":"g","id":"\\ud800"}', "bad_message"),
    ('{"type":"send","group":"lobby","msg":' + "[" * 1000 + "]" * 1000 + "}", "bad_message"),
    ("[" * 60_000 + "]" * 10_000, "too_large"),
]


def test_known_attacks_get_their_error_and_reach_nobody(server: ServerProcess) -> None:
    with connect(server.ws_url("bystander"), subprotocols=NATIVE) as bystander, \
            connect(server.ws_url("seedy")) as seedy, connect(server.ws_url("mallory")) as mallory:
        chat_round(bystander, seedy, "before")
        for text, code in KNOWN_ATTACKS:
            mallory.send(text)
            deadline = time.monotonic() + TIMEOUT
            error = recv_until(mallory, lambda f: f["type"] == "error", deadline)[-1]
            assert error["code"] == code, (text[:80], error)
        # A seed page: plain text and its own frames still go to the lobby.
        mallory.send("[" * 1000)
        mallory.send(json.dumps({"username": "mallory", "msg": "hi all"}))
        for ws in (bystander, seedy):
            got = recv_until(ws, lambda f: f.get("msg") == "hi all", time.monotonic() + TIMEOUT)
            assert [f["msg"] for f in got if f["type"] == "message"] == ["[" * 1000, "hi all"]
        chat_round(bystander, seedy, "after")
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    assert log.count("Refused a frame") == 3  # bad_json, bad_message, too_large: once each


def test_nicknames_are_normalised_and_look_alikes_of_improto_refused(server: ServerProcess) -> None:
    with connect(server.ws_url("cafe\u0301"), subprotocols=NATIVE) as nfd:
        assert browser_json(nfd.recv(timeout=TIMEOUT))["user"] == "café"
        with connect(server.ws_url("café")) as nfc:
            nfc.send(json.dumps({"to_user": "cafe\u0301", "msg": "same user?"}))
            got = recv_until(nfd, lambda f: f.get("msg") == "same user?", time.monotonic() + TIMEOUT)
            assert got[-1]["sender"] == "café"
    for fake in ("іmproto", "ＩＭＰＲＯＴＯ", "impr0to"):
        with connect(server.ws_url(fake)) as ws:
            error = browser_json(ws.recv(timeout=TIMEOUT))
            assert error["code"] == "bad_name" and "improto" in error["reason"].casefold()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd.code == 1008


def test_echo_is_rate_limited_unless_rate_is_0(server: ServerProcess) -> None:
    limited = start_server("--rate", "5")
    try:
        with connect(f"{limited.ws}/echo") as echo:
            for i in range(50):
                echo.send(str(i))
            answers = [echo.recv(timeout=TIMEOUT) for _ in range(50)]
        echoed = [a for a in answers if not a.startswith("{")]
        assert 0 < len(echoed) < 50 and echoed == [str(i) for i in range(len(echoed))]
        assert {json.loads(a)["code"] for a in answers if a.startswith("{")} == {"rate_limited"}
    finally:
        limited.stop()
    with connect(f"{server.ws}/echo") as echo:  # the fixture runs with --rate 0
        for i in range(500):
            echo.send(str(i))
        assert [echo.recv(timeout=TIMEOUT) for _ in range(500)] == [str(i) for i in range(500)]
