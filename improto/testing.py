"""
Test doubles for improto's own tests and for programs that embed it.

The router is sans IO, so most tests need no sockets and no reactor: a
:class:`FakeLink` stands in for a client connection and records what the
router sent it, a :class:`FakeClock` makes rate limits deterministic, and
:func:`make_router` wires both to the in-memory backend::

    from improto.testing import FakeLink, make_router

    router = make_router()
    alice, bob = FakeLink(), FakeLink()
    router.connect(alice, "alice", native=False)
    router.connect(bob, "bob", native=False)
    ...
    assert bob.take() == [...]

For tests that do run a server, :func:`free_port` and :func:`wait_for_port`
start it on a free loopback port and wait until it listens,
:func:`stop_process` stops it, and
:func:`captured_events` collects what ``twisted.logger`` emitted.

This module imports neither pytest nor the global reactor.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.logger import ILogObserver, globalLogPublisher

from improto.backends.memory import MemoryBackend, MemoryHub
from improto.router import Router
from improto.router.limits import RouterLimits

if TYPE_CHECKING:
    from improto.router import SessionLink

__all__ = [
    "FakeClock",
    "FakeLink",
    "MemoryBackend",
    "MemoryHub",
    "captured_events",
    "free_port",
    "make_router",
    "memory_backend",
    "stop_process",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"


# -- the router's collaborators ------------------------------------------------------


@attrs.define(eq=False)
class FakeLink:
    """
    A client connection, as the router sees it (a ``SessionLink``), that
    keeps what it was sent, and how it was closed, for assertions.
    """

    frames: list[tuple[bytes, bool]] = attrs.field(factory=list)
    closed_with: tuple[int, str] | None = None
    #: How many frames arrived through :meth:`broadcast` (encoded once for many).
    broadcasts: int = 0

    def send_frame(self, data: bytes, binary: bool) -> None:
        self.frames.append((data, binary))

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    @classmethod
    def broadcast(cls, links: Sequence[Any], data: bytes, binary: bool) -> None:
        for link in links:
            link.broadcasts += 1
            link.send_frame(data, binary)

    def json(self) -> list[dict[str, Any]]:
        """Every text frame received so far, decoded."""
        return [json.loads(data) for data, binary in self.frames if not binary]

    def take(self) -> list[dict[str, Any]]:
        """The decoded frames received since the last take()."""
        out = self.json()
        self.frames.clear()
        return out


if TYPE_CHECKING:
    # mypy checks that FakeLink is a SessionLink wherever the router wants one.
    _link: SessionLink = FakeLink()


class FakeClock:
    """A monotonic clock that moves only when told to (``now``, :meth:`advance`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def memory_backend(hub: MemoryHub | None = None) -> MemoryBackend:
    """
    A started in-memory backend. Backends sharing one ``hub`` behave like
    the nodes of a cluster, without Redis.
    """
    backend = MemoryBackend(hub)
    backend.start()  # synchronous: its Deferred has already fired
    return backend


def make_router(
    hub: MemoryHub | None = None,
    limits: RouterLimits = RouterLimits(),
    clock: Callable[[], float] | None = None,
) -> Router:
    """A router on a started in-memory backend, with a :class:`FakeClock` unless given one."""
    return Router(memory_backend(hub), limits=limits, clock=clock or FakeClock())


@contextlib.contextmanager
def captured_events() -> Iterator[list[dict[str, Any]]]:
    """Every ``twisted.logger`` event emitted inside the ``with`` block."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)  # any callable of one event is one
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


# -- real servers ----------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster_port(host: str = LOOPBACK) -> int:
    """
    A free port P whose Redis Cluster bus port, P + 10000, is free too (so
    P is at most 45000): for the local clusters the tests and benchmarks start.
    """
    while True:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind((host, candidate))
        except OSError:
            continue
        return port


def wait_for_port(
    port: int,
    process: subprocess.Popen[Any] | None = None,
    timeout: float = 15.0,
    host: str = LOOPBACK,
) -> None:
    """
    Return once ``host:port`` accepts a TCP connection. Raises
    :class:`RuntimeError` when ``process`` (the server, if given) exits
    first, or after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {host}:{port} within {timeout:g} s")


def stop_process(
    process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int:
    """Send ``sig`` to a running ``process``, SIGKILL it after ``timeout`` s; its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
