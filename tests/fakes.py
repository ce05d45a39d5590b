"""Fakes for sans-IO tests of the router: links that record frames."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from improto.backends.memory import MemoryBackend, MemoryHub
from improto.router import Router
from improto.router.limits import RouterLimits


@attrs.define(eq=False)
class FakeLink:
    """A connection that keeps what it was sent, decoded for assertions."""

    frames: list[tuple[bytes, bool]] = attrs.field(factory=list)
    closed_with: tuple[int, str] | None = None
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
        return [json.loads(data) for data, binary in self.frames if not binary]

    def take(self) -> list[dict[str, Any]]:
        """The decoded frames received since the last take()."""
        out = self.json()
        self.frames.clear()
        return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_router(
    hub: MemoryHub | None = None, limits: RouterLimits = RouterLimits(), clock: Any = None
) -> Router:
    backend = MemoryBackend(hub)
    backend.start()
    return Router(backend, limits=limits, clock=clock or FakeClock())
