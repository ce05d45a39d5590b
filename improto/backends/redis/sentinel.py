"""
The Redis Sentinel backend: ``redis-sentinel://host:port,host:port/MASTER/DB``.

It is :class:`~improto.backends.redis.backend.RedisBackend` whose links
do not connect to a fixed address: every connect attempt first asks the
sentinels, in order, ``SENTINEL get-master-addr-by-name MASTER`` and
connects to the answer; every new connection checks ``ROLE`` before its
set-up and is refused (then retried with backoff) unless it reaches a
master. A failover is followed because

* the old master dies, or Sentinel kills its clients when it demotes it
  (``CLIENT KILL TYPE normal|pubsub``): the links reconnect, re-ask
  Sentinel, and find the promoted replica; and
* every heartbeat the node asks Sentinel again, and drops its
  connections if the master it is connected to is no longer the one
  Sentinel names (a demoted master that kept its clients).

After a reconnect it resubscribes and re-registers its presence, exactly
as after any Redis restart; the delivery guarantees are those of the
standalone backend (messages in flight during the switch may be lost,
publishes fail with ``BackendUnavailable`` until the new master is set up).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from improto.backends.interface import BackendUnavailable
from improto.backends.redis.backend import RedisBackend
from improto.backends.redis.client import RespConnection
from improto.backends.redis.options import RedisAddress, RedisOptions, configure_sentinel, one_line
from improto.backends.redis.slots import Address, show

_log = Logger()


@attrs.frozen
class SentinelAddress(RedisAddress):
    """The master's credentials and db; ``display`` says how it is found."""

    master_name: str = "mymaster"
    sentinels: tuple[Address, ...] = ()

    @property
    def display(self) -> str:
        return f"master {self.master_name!r} via Sentinel {','.join(show(s) for s in self.sentinels)}"


class SentinelResolver:
    """Asks the sentinels where the master is; remembers the last answer."""

    def __init__(self, address: SentinelAddress, options: RedisOptions, reactor: Any) -> None:
        self.address = address
        self.options = options
        self.reactor = reactor
        self.current: Address | None = None

    async def master(self) -> Address:
        errors = []
        for sentinel in self.address.sentinels:
            try:
                reply = await self._ask(sentinel)
            except Exception as e:
                errors.append(f"{show(sentinel)}: {one_line(str(e)) or type(e).__name__}")
                continue
            if not reply:
                errors.append(f"{show(sentinel)}: does not know master {self.address.master_name!r}")
                continue
            self.current = (reply[0].decode(), int(reply[1]))
            return self.current
        raise BackendUnavailable("no sentinel named the master (" + "; ".join(errors) + ")")

    async def _ask(self, sentinel: Address) -> Any:
        endpoint = HostnameEndpoint(self.reactor, sentinel[0], sentinel[1], timeout=self.options.connect_timeout)
        conn = await connectProtocol(endpoint, RespConnection(self.reactor, timeout=self.options.command_timeout))
        try:
            return await conn.execute(b"SENTINEL", b"get-master-addr-by-name", self.address.master_name)
        finally:
            conn.close()


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to whichever address the sentinels name at the time of the attempt."""

    def __init__(self, resolver: SentinelResolver) -> None:
        self._resolver = resolver

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        host, port = await self._resolver.master()
        options = self._resolver.options
        endpoint = HostnameEndpoint(self._resolver.reactor, host, port, timeout=options.connect_timeout)
        return await endpoint.connect(factory)


class SentinelBackend(RedisBackend):
    """See the module docstring; build one with :meth:`from_url`."""

    def __init__(self, address: SentinelAddress, options: RedisOptions, reactor: Any) -> None:
        self.resolver = SentinelResolver(address, options, reactor)
        self._connected: dict[str, Address] = {}
        super().__init__(address, options, reactor)

    @classmethod
    def from_url(cls, url: str, reactor: Any = None, prefix: str | None = None, **options: Any) -> SentinelBackend:
        """``redis-sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?option=value...]``."""
        if prefix is not None:
            options["prefix"] = prefix
        sentinels, name, master, opts = configure_sentinel(url, **options)
        address = SentinelAddress(
            master.host, master.port, master.db, master.username, master.password,
            master_name=name, sentinels=tuple(sentinels),
        )
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        return cls(address, opts, reactor)

    def _endpoint(self) -> Any:
        return SentinelEndpoint(self.resolver)

    async def _check_master(self, conn: RespConnection, role: str) -> None:
        peer = conn.transport.getPeer() if conn.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        where = (host, port) if host is not None and port is not None else None
        reply = await conn.execute(b"ROLE")
        kind = reply[0].decode() if reply else "unknown"
        if kind != "master":
            raise BackendUnavailable(
                f"{show(where) if where else 'the address Sentinel named'} is a {kind}, not the master "
                "(failover in progress?)"
            )
        if where is not None:
            self._connected[role] = where

    async def _setup_commands(self, conn: RespConnection) -> None:
        await self._check_master(conn, "command")
        await super()._setup_commands(conn)

    async def _setup_subscriber(self, conn: RespConnection) -> None:
        await self._check_master(conn, "subscriber")
        await super()._setup_subscriber(conn)

    def _set_ok(self) -> None:
        super()._set_ok()
        where = self._connected.get("command")
        if where is not None:
            self._detail = f"Redis master {self.resolver.address.master_name!r} at {show(where)}: {self._detail}"

    def _beat(self) -> None:
        super()._beat()
        Deferred.fromCoroutine(self._follow()).addErrback(lambda _: None)

    async def _follow(self) -> None:
        """Drop connections to a master Sentinel no longer names."""
        named = await self.resolver.master()
        for role, link in (("command", self.command_link), ("subscriber", self.subscriber_link)):
            conn = link.ready
            if conn is not None and self._connected.get(role) not in (None, named):
                _log.warn(
                    "Redis Sentinel backend: master {name} moved to {named}; reconnecting {role}",
                    name=self.resolver.address.master_name, named=show(named), role=role, node_id=self.node_id,
                )
                conn.abort(f"Sentinel names {show(named)} as master now")
