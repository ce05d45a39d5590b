"""Helpers shared by the backend tests: envelopes, polling and an inbox to wait on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from improto.backends.interface import Envelope


def envelope(data: bytes = b"hello", **kw: Any) -> Envelope:
    return Envelope(origin_node=kw.pop("origin_node", "node-a"), origin_session="s1", data=data, **kw)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await sleep(0.02)


class Inbox:
    """A subscribe callback that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []

    def __call__(self, env: Envelope) -> None:
        self.items.append(env)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Envelope]:
        await eventually(lambda: len(self.items) >= count, timeout)
        return self.items


async def settle(publisher: Any, *nodes: Any) -> None:
    """
    Wait until every envelope ``publisher`` published so far reached
    ``nodes``: a backend delivers one publisher's envelopes to a node in
    order, so once a marker published afterwards arrives, the rest has.
    This is how a test proves that something was *not* delivered.
    """
    for node in nodes:
        marker = Inbox()
        await node.subscribe("test:barrier", marker)
        await publisher.publish("test:barrier", envelope(b"barrier"))
        await marker.wait_for(1)
        await node.unsubscribe("test:barrier")
