"""
The Redis Cluster backend: ``redis-cluster://host:port,host:port/?prefix=...``.

Channels spread over the shards with Redis 7 sharded pub/sub: a channel
``<prefix>{<channel>}`` lives on the master owning its slot; a node
``SSUBSCRIBE``\\s it on its subscriber connection to that master and
``SPUBLISH``\\es there. ``SPUBLISH`` counts the subscribers connected to
that master; improto subscribes on masters only and holds one subscriber
connection per master, each channel on exactly one of them, so the count
is still the number of nodes that received the envelope and 0 still
means "nobody, anywhere" (what the router's "user offline" relies on).

History is the standalone streams scripts
(:mod:`~improto.backends.redis.streams`), run on the master of the
stream's slot, with ``SPUBLISH`` in ``APPEND``: the router names a
stream and its channel alike, and the hash tag puts the channel in the
stream keys' slot (``<prefix>{<stream>}:seq``), as Redis requires of a
script's keys and shard channels.

Presence is the standalone scripts on per-scope hash-tagged keys
(:class:`~improto.backends.redis.shards.ClusterPresenceStore`): every
script touches one slot. A node's heartbeat is one key per scope it
holds members of, refreshed every ``heartbeat_interval``.

The slot map (``CLUSTER SLOTS``) is read at start, every heartbeat, at
once after a ``MOVED`` or a server-sent ``sunsubscribe`` (the slot moved
away), and every 0.2 s while some slot has no reachable master (a failover
in progress: the dead master's replica is promoted, the map names it, the
node connects to it, resubscribes the channels of those slots there and
re-registers its presence). Meanwhile the other shards keep working:
publishes to a slot whose master is away fail at once with
``BackendUnavailable`` (the client gets ``backend_unavailable``), the
rest are delivered. ``health()`` is OK only when every slot has a ready
master; its detail lists every shard.

Delivery guarantees are those of the standalone backend, per shard:
envelopes one node publishes on one channel reach each node in publish
order, but two channels on two shards are two streams, so an envelope on
one may overtake an earlier one on the other (the router's "left the
lobby" and "went offline" events, for instance).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from improto.backends.interface import (
    Appended,
    BackendHealth,
    BackendState,
    BackendUnavailable,
    Envelope,
    EnvelopeCallback,
    HistoryPage,
    IBackend,
    Retention,
)
from improto.backends.redis.backend import RedisStats
from improto.backends.redis.client import RespConnection, as_unavailable
from improto.backends.redis.options import RedisAddress, RedisOptions, configure_cluster
from improto.backends.redis.presence import NodePresence
from improto.backends.redis.sharded import ShardedSubscriber, ShardedSubscriptions, channel_key
from improto.backends.redis.shards import ClusterCommands, ClusterPresenceStore, Shard
from improto.backends.redis.slots import Address, SlotMap, key_slot, show
from improto.backends.redis.streams import StreamStore
from improto.backends.redis.subscriptions import native_listeners
from improto.backends.redis.wire import encode_envelope

_log = Logger()

#: How often the slot map is re-read while some slot has no ready master.
REFRESH_POLL = 0.2


@implementer(IBackend)
class ClusterBackend:
    """See the module docstring; build one with :meth:`from_url`."""

    #: Called with each SPUBLISH's Deferred (improto.metrics times it).
    publish_observer: Callable[[Deferred[int]], None] | None = None
    #: Set by the router: see :func:`~improto.backends.redis.subscriptions.native_listeners`.
    native_listeners = native_listeners("subs")

    def __init__(self, seeds: list[Address], address: RedisAddress, options: RedisOptions, reactor: Any) -> None:
        self.seeds = seeds
        #: Credentials shared by every master (host and port unused).
        self.address = address
        self.options = options
        self.reactor = reactor
        self.node_id = options.node_id or uuid.uuid4().hex[:12]
        self.stats = RedisStats()
        self.prefix = options.prefix.encode("utf-8")
        self.slots = SlotMap()
        self.shards: dict[Address, Shard] = {}
        self.commands = ClusterCommands(self)
        self.subs = ShardedSubscriptions(self.prefix, self.node_id, self.stats, self._subscriber_for, self.refresh)
        store = ClusterPresenceStore(self.prefix, self.node_id, int(options.heartbeat_ttl * 1000))
        self.presence = NodePresence(store)
        self.streams = StreamStore(self.prefix, sharded=True)
        self.retention = Retention()
        store.live_scopes = lambda: {s for s, _ in self.presence.entries | self.presence.tombstones}
        self._state = BackendState.STARTING
        self._detail = "not started; Redis Cluster at " + ",".join(show(s) for s in seeds)
        self._refreshing = False
        self._again = False
        self._stopping: Deferred[None] | None = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor

    @classmethod
    def from_url(cls, url: str, reactor: Any = None, prefix: str | None = None, **options: Any) -> ClusterBackend:
        """``redis-cluster://[[user]:password@]host:port[,host:port...][/][?option=value...]``."""
        if prefix is not None:
            options["prefix"] = prefix
        seeds, address, opts = configure_cluster(url, **options)
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        return cls(seeds, address, opts, reactor)

    # -- routing ----------------------------------------------------------

    def owner_of(self, key: bytes) -> Address | None:
        return self.slots.owner(key_slot(key))

    def _subscriber_for(self, key: bytes) -> ShardedSubscriber | None:
        address = self.owner_of(key)
        shard = self.shards.get(address) if address else None
        conn = shard.subscriber.ready if shard is not None and shard.ready else None
        return cast(ShardedSubscriber | None, conn)

    def ensure_shard(self, address: Address) -> Shard:
        shard = self.shards.get(address)
        if shard is None:
            shard = self.shards[address] = Shard(self, address)
            if self._state is not BackendState.STARTING:
                shard.start().addErrback(lambda _: None)
        return shard

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED``: trust it for that slot now, and re-read the whole map."""
        self.slots.owners[slot] = address
        self.ensure_shard(address)
        self.refresh()

    # -- slot map ---------------------------------------------------------

    async def _fetch_slots(self) -> SlotMap:
        errors: list[str] = []
        ready = [s for s in self.shards.values() if s.command.ready is not None]
        for shard in ready:
            try:
                reply = await cast(RespConnection, shard.command.ready).execute(b"CLUSTER", b"SLOTS")
                return SlotMap.from_cluster_slots(reply, shard.address[0])
            except Exception as e:
                errors.append(f"{shard.display}: {e}")
        for address in dict.fromkeys([*self.seeds, *self.shards]):
            try:
                return await self._probe(address)
            except Exception as e:
                errors.append(f"{show(address)}: {e}")
        raise BackendUnavailable("cannot read the slot map: " + "; ".join(errors))

    async def _probe(self, address: Address) -> SlotMap:
        endpoint = HostnameEndpoint(self.reactor, address[0], address[1], timeout=self.options.connect_timeout)
        conn = await connectProtocol(endpoint, RespConnection(self.reactor, timeout=self.options.command_timeout))
        try:
            auth = self.address.auth_args()
            if auth is not None:
                await conn.execute(b"AUTH", *auth)
            return SlotMap.from_cluster_slots(await conn.execute(b"CLUSTER", b"SLOTS"), address[0])
        finally:
            conn.close()

    def _apply(self, slots: SlotMap) -> None:
        changed = slots.owners != self.slots.owners
        self.slots = slots
        masters = slots.masters()
        for address in masters:
            self.ensure_shard(address)
        for address in [a for a in self.shards if a not in masters]:
            self.shards.pop(address).close()
        if changed:
            _log.info(
                "Redis Cluster backend: slot map of node {node_id}: {shards}",
                node_id=self.node_id,
                shards="; ".join(f"{s.display} slots {slots.ranges(a)}" for a, s in sorted(self.shards.items())),
            )
        self.subs.reconcile()

    def refresh(self) -> None:
        """Re-read the slot map soon; while some slot lacks a ready master, keep at it."""
        if self._refreshing:
            self._again = True
            return
        self._refreshing = True
        Deferred.fromCoroutine(self._refresh_loop()).addErrback(
            lambda f: _log.failure("Redis Cluster backend: slot map refresh failed", f)
        )

    async def _refresh_loop(self) -> None:
        try:
            while self._state is not BackendState.STOPPED:
                self._again = False
                try:
                    self._apply(await self._fetch_slots())
                except BackendUnavailable as e:
                    self._detail = str(e)
                self._update_state()
                if not self._again and self._state is not BackendState.UNAVAILABLE:
                    return
                await deferLater(self.reactor, REFRESH_POLL, lambda: None)
        finally:
            self._refreshing = False

    # -- state ------------------------------------------------------------

    def shard_changed(self, shard: Shard, lost: RespConnection | None) -> None:
        if lost is not None:
            self.subs.lost(lost)
        if self.shards.get(shard.address) is not shard or self._state is BackendState.STOPPED:
            return
        if lost is not None:
            self._update_state()
            self.refresh()
            return
        self.subs.reconcile()
        self.presence.reregister(cast(RespConnection, self.commands)).addErrback(lambda _: None)
        self._update_state()

    def _update_state(self) -> None:
        if self._state in (BackendState.STARTING, BackendState.STOPPED):
            return
        healthy = self.slots.covered and all(self.shards[a].ready for a in self.slots.masters())
        self._detail = self._describe()
        new = BackendState.OK if healthy else BackendState.UNAVAILABLE
        if new is not self._state:
            self._state = new
            log = _log.info if healthy else _log.warn
            log("Redis Cluster backend: node {node_id} is {state}: {detail}",
                node_id=self.node_id, state=new.value, detail=self._detail)

    def _describe(self) -> str:
        shards = "; ".join(
            f"{s.display} slots {self.slots.ranges(a)} {'ok' if s.ready else s.detail}"
            for a, s in sorted(self.shards.items())
        )
        return f"Redis Cluster, node {self.node_id}: {shards}"

    def health(self) -> BackendHealth:
        return BackendHealth(self._state, self._detail)

    @property
    def channels_subscribed(self) -> int:
        """Sharded channels confirmed on the masters' connections (a metric)."""
        return self.subs.active

    # -- life cycle -------------------------------------------------------

    def start(self) -> Deferred[None]:
        if self._state is not BackendState.STARTING:
            return fail(BackendUnavailable(f"cannot start a backend that is {self._state.value}"))
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        try:
            self._apply(await self._fetch_slots())
            if not self.slots.covered:
                raise BackendUnavailable("Redis Cluster does not serve every slot (CLUSTER SLOTS)")
            await gatherResults([s.start() for s in self.shards.values()], consumeErrors=True)
        except Exception as e:
            error = getattr(getattr(e, "subFailure", None), "value", e)
            self._detail = str(error)
            await gatherResults([s.close() for s in self.shards.values()])
            raise error from None
        if self._state is not BackendState.STARTING:
            raise BackendUnavailable(f"backend was {self._state.value} while starting")
        self._state = BackendState.UNAVAILABLE
        self._update_state()
        self._heartbeat.start(self.options.heartbeat_interval, now=False)
        _log.info("Redis Cluster backend: node {node_id} connected: {detail}", node_id=self.node_id, detail=self._detail)

    def stop(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        done: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            done.callback(None)
            return result

        self._stopping.addBoth(relay)
        return done

    async def _stop(self) -> None:
        self._state = BackendState.STOPPED
        self._detail = "stopped"
        if self._heartbeat.running:
            self._heartbeat.stop()
        self.subs.clear()
        goodbye = self.presence.goodbye(cast(RespConnection, self.commands))
        if goodbye is not None:
            try:
                await goodbye
            except Exception as e:
                _log.warn(
                    "Redis Cluster backend: could not remove presence of node {node_id} on stop ({error})",
                    node_id=self.node_id,
                    error=getattr(e, "subFailure", e),
                )
        shards, self.shards = list(self.shards.values()), {}
        await gatherResults([s.close() for s in shards])

    # -- pub/sub and presence ---------------------------------------------

    def _refuse(self, what: str) -> Deferred[Any] | None:
        if self._state in (BackendState.STOPPED, BackendState.STARTING):
            return fail(BackendUnavailable(f"cannot {what}: backend {self._state.value}"))
        return None

    def publish(self, channel: str, envelope: Envelope) -> Deferred[int]:
        refused = self._refuse("publish")
        if refused is not None:
            return refused
        try:
            payload = encode_envelope(envelope)
        except Exception:
            return fail()
        self.stats.published += 1
        d = self.commands.execute(b"SPUBLISH", channel_key(self.prefix, channel), payload)
        if self.publish_observer is not None:
            self.publish_observer(d)
        return d.addErrback(as_unavailable, "SPUBLISH")

    def subscribe(self, channel: str, callback: EnvelopeCallback) -> Deferred[None]:
        if self._state is BackendState.STOPPED:
            return fail(BackendUnavailable("cannot subscribe: backend stopped"))
        return self.subs.subscribe(None, channel, callback, self._detail)

    def unsubscribe(self, channel: str) -> Deferred[None]:
        if self._state is BackendState.STOPPED:
            return succeed(None)
        return self.subs.unsubscribe(None, channel)

    # -- history (improto.backends.redis.streams, SPUBLISH variant) ---------

    def _on_commands(self, what: str, call: Callable[[RespConnection], Deferred[Any]]) -> Deferred[Any]:
        refused = self._refuse(what)
        if refused is not None:
            return refused
        return call(cast(RespConnection, self.commands)).addErrback(as_unavailable, what)

    def append(
        self, stream: str, channel: str, envelope: Envelope,
        idempotency_key: str | None = None, idempotency_ttl: float = 0,
    ) -> Deferred[Appended]:
        """
        One script on the master of ``stream``'s slot, publishing there:
        ``channel`` must be in that slot (the router names a stream and
        its channel alike), else Redis could not run it atomically.
        """
        key = channel_key(self.prefix, channel)
        if key_slot(key) != key_slot(self.streams.key(stream, "seq")):
            return fail(ValueError(f"channel {channel!r} is not in the slot of stream {stream!r}"))
        self.stats.published += 1
        return self._on_commands("append", lambda conn: self.streams.append(
            conn, key, stream, envelope, self.retention, idempotency_key, idempotency_ttl))

    def history(
        self, stream: str, after_seq: int, limit: int, before_seq: int | None = None
    ) -> Deferred[HistoryPage]:
        return self._on_commands("read history", lambda conn: self.streams.history(
            conn, stream, after_seq, limit, before_seq, self.retention))

    def mark_seen(self, user: str, cursor: int, ttl: float) -> Deferred[None]:
        return self._on_commands("mark seen", lambda conn: self.streams.mark_seen(conn, user, cursor, ttl))

    def last_seen(self, user: str) -> Deferred[int | None]:
        return self._on_commands("read last seen", lambda conn: self.streams.last_seen(conn, user))

    def presence_add(self, scope: str, member: str) -> Deferred[bool]:
        return self._refuse("add presence") or self.presence.add(cast(RespConnection, self.commands), scope, member)

    def presence_remove(self, scope: str, member: str) -> Deferred[bool]:
        refused = self._refuse("remove presence")
        if refused is not None:
            return refused
        return self.presence.remove(cast(RespConnection, self.commands), scope, member)

    def presence_members(self, scope: str) -> Deferred[list[str]]:
        refused = self._refuse("list presence")
        if refused is not None:
            return refused
        d = self.presence.store.members(cast(RespConnection, self.commands), scope)
        return d.addErrback(as_unavailable, "presence_members")

    def _beat(self) -> None:
        self.presence.beat(cast(RespConnection, self.commands))
        for shard in self.shards.values():
            sub = shard.subscriber.ready
            if sub is not None:
                sub.execute(b"PING").addErrback(lambda _: None)
        self.refresh()
