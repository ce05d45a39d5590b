"""improto.testing: the doubles are what they stand in for, and do what they say."""

from __future__ import annotations

import inspect
import json
import signal
import socket
import subprocess
import sys

import pytest
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from improto.backends.interface import IBackend
from improto.router import Router, Session, SessionLink
from improto.router.limits import RouterLimits
from improto.testing import (
    FakeClock,
    FakeLink,
    MemoryHub,
    captured_events,
    free_port,
    make_router,
    memory_backend,
    stop_process,
    wait_for_port,
)


def test_the_memory_backend_provides_ibackend_and_is_started() -> None:
    backend = memory_backend()
    assert verifyObject(IBackend, backend)
    assert backend.health().state.value == "ok"


def test_a_router_from_make_router_has_a_verified_started_backend() -> None:
    router = make_router()
    assert verifyObject(IBackend, router.backend)
    assert router.backend.health().state.value == "ok"
    assert isinstance(router.clock, FakeClock)


def session_link_members() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member.__func__ if isinstance(member, classmethod) else member)
        for name, member in vars(SessionLink).items()
        if not name.startswith("_") and callable(getattr(SessionLink, name))
    }


def test_fake_link_has_every_session_link_method_with_its_parameters() -> None:
    wanted = session_link_members()
    assert set(wanted) == {"send_frame", "close", "broadcast"}
    for name, signature in wanted.items():
        raw = vars(FakeLink)[name]
        protocol_raw = vars(SessionLink)[name]
        assert isinstance(raw, classmethod) == isinstance(protocol_raw, classmethod), name
        mine = inspect.signature(raw.__func__ if isinstance(raw, classmethod) else raw)
        assert list(mine.parameters) == list(signature.parameters), name


def send(router: Router, session: Session, text: str) -> None:
    router.receive_text(session, text, len(text.encode("utf-8")))


def test_fake_links_record_what_a_router_sends_and_closes() -> None:
    router = make_router(limits=RouterLimits(max_message_size=20))
    alice, bob = FakeLink(), FakeLink()
    a = router.connect(alice, "alice", native=False)
    router.connect(bob, "bob", native=False)
    send(router, a, json.dumps({"msg": "hi"}))
    [frame] = bob.take()
    assert (frame["sender"], frame["msg"]) == ("alice", "hi")
    assert bob.broadcasts == 1 and bob.take() == []
    send(router, a, "x" * 21)
    assert [f["code"] for f in alice.take()] == ["too_large"]
    assert alice.closed_with is None
    router.close_all(1001, "bye")
    assert alice.closed_with == bob.closed_with == (1001, "bye")


def test_routers_on_one_hub_are_nodes_of_one_cluster() -> None:
    hub = MemoryHub()
    one, two = make_router(hub), make_router(hub)
    alice, bob = FakeLink(), FakeLink()
    a = one.connect(alice, "alice", native=False)
    two.connect(bob, "bob", native=False)
    send(one, a, json.dumps({"to_user": "bob", "msg": "across"}))
    assert [f["msg"] for f in bob.take()] == ["across"]


def test_the_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    start = clock()
    assert clock() == start
    clock.advance(2.5)
    assert clock() == start + 2.5


def test_captured_events_holds_what_was_logged_inside_only() -> None:
    log = Logger(namespace="improto.test")
    log.info("before")
    with captured_events() as events:
        log.info("inside {n}", n=1)
    log.info("after")
    assert [e["log_format"] for e in events if e.get("log_namespace") == "improto.test"] == [
        "inside {n}"
    ]


def test_wait_for_port_returns_once_something_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        wait_for_port(listener.getsockname()[1], timeout=5)


def test_wait_for_port_gives_up_at_its_deadline() -> None:
    port = free_port()
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{port} within 0.3 s"):
        wait_for_port(port, timeout=0.3)


def test_wait_for_port_reports_a_server_that_exited() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(10)
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_for_port(free_port(), process, timeout=5)


def test_stop_process_signals_then_kills_what_does_not_stop() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_process(polite) == -signal.SIGTERM
    stubborn = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
         " print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    assert stop_process(stubborn, timeout=0.5) == -signal.SIGKILL
    assert stop_process(stubborn) == -signal.SIGKILL  # already gone: only its status
    stubborn.stdout.close()
