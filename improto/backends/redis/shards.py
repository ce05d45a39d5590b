"""
The pieces of the Cluster backend that deal with one master at a time.

:class:`Shard` is a master's two links (commands, sharded subscriber).
:class:`ClusterCommands` looks like one connection to the code that
builds commands (the presence scripts, publish): ``execute`` routes each
command to the master owning the slot of its key, follows ``MOVED``
(after which the slot map is refreshed) and ``ASK`` (``ASKING`` first,
on the target). :class:`ClusterPresenceStore` lays the presence keys out
so that every script touches one slot: the scope's hash and the
heartbeats of the nodes holding members of it share the hash tag
``{<prefix>presence:<scope>}``. The scripts are the standalone ones,
unchanged: their heartbeat key prefix (``ARGV[1]``) is per scope here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults
from twisted.python.failure import Failure

from improto.backends.interface import BackendUnavailable
from improto.backends.redis.client import RedisReplyError, RespConnection
from improto.backends.redis.connection import RedisLink
from improto.backends.redis.presence import (
    ADD,
    HEARTBEAT,
    MEMBERS,
    REMOVE,
    Announcement,
    PresenceStore,
)
from improto.backends.redis.sharded import ShardedSubscriber
from improto.backends.redis.slots import Address, key_slot, show

if TYPE_CHECKING:
    from improto.backends.redis.cluster import ClusterBackend


class Shard:
    """One master: its command and subscriber links, and whether both are set up."""

    def __init__(self, backend: ClusterBackend, address: Address) -> None:
        self.address = address
        self.display = show(address)
        self.detail = "connecting"
        self._backend = backend
        target = attrs.evolve(backend.address, host=address[0], port=address[1], db=0)
        common: dict[str, Any] = dict(
            on_ready=lambda conn: None,
            on_lost=lambda cause: None,
            on_retry_failed=self._retry_failed,
            select_db=False,
        )
        node = backend.node_id
        self.command = RedisLink(
            "command", f"improto:{node}:cmd", backend.reactor, target, backend.options,
            setup=self._setup_commands, stats=backend.stats.commands, **common,
        )
        self.subscriber = RedisLink(
            "subscriber", f"improto:{node}:sub", backend.reactor, target, backend.options,
            setup=self._setup_subscriber, stats=backend.stats.subscriber,
            on_message=backend.subs.on_message, protocol=ShardedSubscriber, **common,
        )

    @property
    def ready(self) -> bool:
        return self.command.ready is not None and self.subscriber.ready is not None

    def start(self) -> Deferred[Any]:
        return gatherResults([self.command.start(), self.subscriber.start()], consumeErrors=True)

    def close(self) -> Deferred[Any]:
        return gatherResults([self.command.close(), self.subscriber.close()])

    def _watch(self, conn: RespConnection, role: str) -> None:
        # RedisLink reports readiness and losses only after a successful
        # first start; a shard found during a failover may fail its first
        # attempt, so the shard watches its connections itself.
        def lost(reason: str) -> str:
            self.detail = f"lost {role} connection: {reason}"
            self._backend.shard_changed(self, conn)
            return reason

        conn.lost.addCallback(lost)
        self._backend.reactor.callLater(0, self._maybe_ready)

    def _maybe_ready(self) -> None:
        if self.ready:
            self.detail = "ok"
            self._backend.shard_changed(self, None)

    def _retry_failed(self, reason: str) -> None:
        self.detail = reason

    async def _setup_commands(self, conn: RespConnection) -> None:
        await self._backend.presence.store.load_scripts(conn)
        await self._backend.streams.load_scripts(conn)
        self._watch(conn, "command")

    async def _setup_subscriber(self, conn: RespConnection) -> None:
        sub = cast(ShardedSubscriber, conn)  # ClientService's proxy of one
        await self._backend.subs.resubscribe_on(sub, lambda key: self._backend.owner_of(key) == self.address)
        self._watch(conn, "subscriber")


def _moved_target(message: str) -> tuple[int, Address]:
    """``MOVED 3999 127.0.0.1:6381`` -> ``(3999, ("127.0.0.1", 6381))``."""
    _, slot, where = message.split()
    host, _, port = where.rpartition(":")
    return int(slot), (host.strip("[]"), int(port))


class ClusterCommands:
    """A connection look-alike that sends each command to its key's master."""

    #: Redirections followed per command before giving up.
    MAX_REDIRECTS = 3

    def __init__(self, backend: ClusterBackend) -> None:
        self._backend = backend

    def execute(self, *args: Any) -> Deferred[Any]:
        key = args[3] if args[0] in (b"EVALSHA", b"EVAL") else args[1]
        if isinstance(key, str):
            key = key.encode("utf-8")
        return self._send(key_slot(key), args, 0, None)

    def _send(self, slot: int, args: tuple[Any, ...], redirects: int, asking: Address | None) -> Deferred[Any]:
        backend = self._backend
        address = asking or backend.slots.owner(slot)
        shard = backend.shards.get(address) if address else None
        conn = shard.command.ready if shard is not None else None
        if conn is None:
            where = f"shard {shard.display} ({shard.detail})" if shard else "no master"
            return fail(BackendUnavailable(f"slot {slot} is unavailable: {where}"))
        if asking:
            conn.execute(b"ASKING").addErrback(lambda _: None)
        d = conn.execute(*args)

        def redirected(failure: Failure) -> Any:
            failure.trap(RedisReplyError)
            message = str(failure.value)
            kind = message.split(" ", 1)[0]
            if kind not in ("MOVED", "ASK") or redirects >= self.MAX_REDIRECTS:
                return failure
            moved_slot, target = _moved_target(message)
            if kind == "MOVED":
                backend.moved(moved_slot, target)
                return self._send(slot, args, redirects + 1, None)
            backend.ensure_shard(target)
            return self._send(slot, args, redirects + 1, target)

        return d.addErrback(redirected)


def _unwrap(failure: Failure) -> Failure:
    while isinstance(failure.value, FirstError):
        failure = failure.value.subFailure
    return failure


@attrs.define
class ClusterPresenceStore(PresenceStore):
    """Presence keys hash-tagged per scope; see the module docstring."""

    #: The scopes this node holds entries in (set by the backend).
    live_scopes: Callable[[], Iterable[str]] = lambda: ()
    touched: set[str] = attrs.field(factory=set)

    def _tag(self, scope: str) -> bytes:
        return b"{" + self.prefix + b"presence:" + scope.encode("utf-8") + b"}"

    def scope_key(self, scope: str) -> bytes:
        return self._tag(scope)

    def _node_prefix(self, scope: str) -> bytes:
        return self._tag(scope) + b":node:"

    def _beat(self, conn: RespConnection, scope: str) -> Deferred[Any]:
        key = self._node_prefix(scope) + self.node_id.encode("ascii")
        return HEARTBEAT.run(conn, [key], [b"1", self.heartbeat_ttl_ms])

    def heartbeat(self, conn: RespConnection) -> Deferred[bool]:
        calls = [self._beat(conn, scope) for scope in set(self.live_scopes())]
        d = gatherResults(calls, consumeErrors=True)
        return d.addCallbacks(lambda existed: all(existed), _unwrap)

    def goodbye(self, conn: RespConnection) -> Deferred[Any]:
        keys = [self._node_prefix(s) + self.node_id.encode("ascii") for s in self.touched]
        self.touched.clear()
        return gatherResults([conn.execute(b"DEL", key) for key in keys], consumeErrors=True).addErrback(_unwrap)

    def add(self, conn: RespConnection, scope: str, member: str,
            announce: Announcement | None = None) -> Deferred[bool]:
        _no_announcement(announce)
        self.touched.add(scope)
        # Same slot, same connection, in order: the heartbeat is there first.
        self._beat(conn, scope).addErrback(lambda _: None)
        args: list[bytes | str | int] = [self._node_prefix(scope), self.node_id, member]
        return ADD.run(conn, [self.scope_key(scope)], args).addCallback(bool)

    def remove(self, conn: RespConnection, scope: str, member: str,
               announce: Announcement | None = None) -> Deferred[bool]:
        _no_announcement(announce)
        args: list[bytes | str | int] = [self._node_prefix(scope), self.node_id, member]
        return REMOVE.run(conn, [self.scope_key(scope)], args).addCallback(bool)

    def members(self, conn: RespConnection, scope: str) -> Deferred[list[str]]:
        d = MEMBERS.run(conn, [self.scope_key(scope)], [self._node_prefix(scope), self.node_id])
        return d.addCallback(lambda raw: sorted(m.decode("utf-8", "replace") for m in raw))


def _no_announcement(announce: Announcement | None) -> None:
    """The presence hash and the channel are in different slots: a script cannot publish there."""
    if announce is not None:
        raise ValueError("Redis Cluster presence cannot announce in its script (no IAnnouncingPresence)")
