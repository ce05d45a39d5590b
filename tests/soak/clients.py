"""
One soak client connection, and the book-keeping every check needs.

A :class:`Conn` wraps one ``websockets`` client connection: it sends
requests with ids, matches every ack, error or ``who`` answer to its
request, and checks each delivery as it arrives (no duplicates, nothing
for a group it is not in, never its own group message back). What the
final checks need (acked and refused message ids, what observers got) is
collected in :class:`Stats`, one per worker process.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from typing import Any

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

NATIVE = "improto.v1"
#: Marker messages the harness sends once everyone is quiet; never counted.
FLUSH = "flush."

# websockets >= 15 reads proxy settings from the environment; loopback
# traffic must never go through one.
_NO_PROXY: dict[str, Any] = (
    {"proxy": None} if "proxy" in inspect.signature(connect.__init__).parameters else {}
)


@attrs.define
class Stats:
    """Everything one worker counted, sent back to the harness at the end."""

    counts: Counter[str] = attrs.field(factory=Counter)
    #: (message id, "group" | "private", group or user) of every acked message.
    acked: list[tuple[str, str, str]] = attrs.field(factory=list)
    refused: set[str] = attrs.field(factory=set)
    #: Ids of every message sent (native and seed), acked or not.
    sent: set[str] = attrs.field(factory=set)
    #: Ids of every message delivered to any connection of this worker.
    delivered: set[str] = attrs.field(factory=set)
    #: First few examples of each violation, for the failure message.
    examples: dict[str, list[str]] = attrs.field(factory=dict)
    names: set[str] = attrs.field(factory=set)
    groups: set[str] = attrs.field(factory=set)

    def violation(self, kind: str, detail: str) -> None:
        self.counts[f"violation.{kind}"] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(detail)


@attrs.define
class Request:
    kind: str  # send, private, join, leave, who
    target: str  # group or user
    msg_id: str | None = None
    #: The only outcome acceptable for this request, when there is one.
    must: str | None = None


@attrs.define(eq=False)
class Conn:
    """One open connection of the soak; ``key`` identifies it as a sender."""

    key: str
    name: str
    native: bool
    stats: Stats
    ws: ClientConnection | None = None
    groups: set[str] = attrs.field(factory=lambda: {"lobby"})
    joining: set[str] = attrs.field(factory=set)
    leaving: set[str] = attrs.field(factory=set)
    pending: dict[str, Request] = attrs.field(factory=dict)
    seen: set[str] = attrs.field(factory=set)
    #: For observers: every message id received, and the flush markers.
    observed: set[str] | None = None
    flushes: set[str] = attrs.field(factory=set)
    closing: bool = False
    closed: bool = False
    idle: asyncio.Event = attrs.field(factory=asyncio.Event)
    welcomed: asyncio.Event = attrs.field(factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    _serial: int = 0

    async def open(self, url: str, compression: bool) -> None:
        self.ws = await connect(
            url,
            subprotocols=[NATIVE] if self.native else None,  # type: ignore[list-item]
            compression="deflate" if compression else None,
            open_timeout=60,
            close_timeout=20,
            # The server pings every 30 s; a client ping would only add load.
            ping_interval=None,
            max_queue=None,
            **_NO_PROXY,
        )
        self.idle.set()
        self.stats.names.add(self.name)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        if self.native:
            await self.welcomed.wait()

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader

    # -- sending -----------------------------------------------------------

    def _next_id(self) -> str:
        self._serial += 1
        return f"{self.key}.{self._serial}"

    def request(self, kind: str, target: str, must: str | None = None, text: str = "") -> None:
        """Send one native request; its answer is matched in :meth:`_answer`."""
        if self.closed or self.ws is None:
            return
        request_id = self._next_id()
        frame: dict[str, Any] = {"type": kind, "id": request_id}
        request = Request(kind, target, must=must)
        if kind == "private":
            frame["to"] = target
        else:
            frame["group"] = target
        if kind in ("send", "private"):
            request.msg_id = request_id
            frame["msg"] = {"id": request_id, "text": text}
            self.stats.sent.add(request_id)
        if kind == "join":
            self.joining.add(target)
            self.stats.groups.add(target)
        elif kind == "leave":
            self.groups.discard(target)
            self.leaving.add(target)
        self.pending[request_id] = request
        self.idle.clear()
        self.stats.counts[f"sent.{kind}"] += 1
        self._write(frame)

    def seed_send(self, to_user: str | None, text: str) -> None:
        """A seed-dialect frame: no id, no ack; only its delivery is checked."""
        if self.closed or self.ws is None:
            return
        msg_id = self._next_id()
        self.stats.sent.add(msg_id)
        frame: dict[str, Any] = {"msg": {"id": msg_id, "text": text}}
        if to_user is None:
            frame["username"] = self.name
            self.stats.counts["sent.seed_group"] += 1
        else:
            frame["to_user"] = to_user
            self.stats.counts["sent.seed_private"] += 1
        self._write(frame)

    def _write(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        # send() only waits when the write buffer is over its limit; a task
        # per frame keeps the actor's clock honest when it does.
        asyncio.get_running_loop().create_task(self._send(json.dumps(frame)))

    async def _send(self, text: str) -> None:
        assert self.ws is not None
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            pass  # counted by the reader

    async def quiesce(self, timeout: float) -> None:
        """Wait until every request has its answer (or the timeout)."""
        if self.pending and not self.closed:
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    # -- receiving ---------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        code: int | None = None
        try:
            async for raw in self.ws:
                self._frame(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            code = self.ws.close_code
            if not self.closing:
                self.stats.violation("unexpected_close", f"{self.name} ({self.key}): {code}")
            if self.pending:
                self.stats.counts["unanswered"] += len(self.pending)
                self.stats.violation("unanswered", f"{self.name}: {list(self.pending)[:3]}")
                self.pending.clear()
            self.idle.set()
            self.welcomed.set()

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in ("message", "private"):
            self._delivery(kind, frame)
        elif kind in ("ack", "error", "who"):
            self._answer(kind, frame)
        elif kind == "presence":
            self.stats.counts["recv.presence"] += 1
        elif kind == "gap":
            # The inbox of a returning user reaches back past the history the
            # soak servers keep (--history-age): the protocol says so with a gap.
            self.stats.counts["recv.gap"] += 1
        elif kind == "welcome":
            self.welcomed.set()
        else:
            self.stats.violation("unknown_frame", json.dumps(frame)[:200])

    def _delivery(self, kind: str, frame: dict[str, Any]) -> None:
        msg = frame.get("msg")
        msg_id = msg.get("id") if isinstance(msg, dict) else None
        if not isinstance(msg_id, str):
            self.stats.violation("foreign_message", json.dumps(frame)[:200])
            return
        if msg_id.startswith(FLUSH):
            self.flushes.add(msg_id)
            return
        stats = self.stats
        stats.counts[f"recv.{kind}"] += 1
        stats.delivered.add(msg_id)
        if msg_id in self.seen:
            stats.violation("duplicate", f"{self.name} got {msg_id} twice")
        self.seen.add(msg_id)
        if self.observed is not None:
            self.observed.add(msg_id)
        if kind == "message":
            group = frame.get("group", "")
            if group not in self.groups and group not in self.joining and group not in self.leaving:
                stats.violation("stray", f"{self.name} not in {group!r} got {msg_id}")
            if msg_id.rsplit(".", 1)[0] == self.key:
                stats.violation("own_echo", f"{self.name} got its own {msg_id}")
        elif self.name not in (frame.get("to"), frame.get("sender")):
            stats.violation("misdelivered", f"{self.name} got {json.dumps(frame)[:200]}")

    def _answer(self, kind: str, frame: dict[str, Any]) -> None:
        stats = self.stats
        if not self.native and kind == "error" and "id" not in frame:
            # A seed client's private message to someone who just left.
            stats.counts[f"recv.seed_error.{frame.get('code')}"] += 1
            if frame.get("code") != "unknown_user":
                stats.violation("error", json.dumps(frame)[:200])
            return
        request = self.pending.pop(str(frame.get("id")), None)
        if request is None:
            stats.violation("unsolicited", json.dumps(frame)[:200])
            return
        outcome = frame["code"] if kind == "error" else kind
        stats.counts[f"answer.{request.kind}.{outcome}"] += 1
        if request.must is not None and outcome != request.must:
            stats.violation(f"{request.kind}_not_{request.must}", f"{request.target}: {frame}")
        if request.kind == "join":
            self.joining.discard(request.target)
            if kind == "ack":
                self.groups.add(request.target)
        elif request.kind == "leave":
            self.leaving.discard(request.target)
        elif request.msg_id is not None:
            if kind == "ack":
                where = "group" if request.kind == "send" else "private"
                stats.acked.append((request.msg_id, where, request.target))
            else:
                stats.refused.add(request.msg_id)
        if kind == "error" and outcome != "unknown_user":
            stats.violation("error", f"{request.kind} {request.target}: {outcome}")
        if not self.pending:
            self.idle.set()
