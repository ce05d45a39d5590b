"""
What a ``redis://`` URL says, and whether that Redis answers.

This module owns the user-facing side of configuring the Redis backend:
:class:`RedisAddress` (where), :class:`RedisOptions` (tunables, also
accepted as URL query parameters), :func:`parse_redis_url` and the
blocking start-up probe :func:`check_reachable`. Every error it raises is
one line without the password, because it ends up in front of an operator
as a ``twistd`` usage error.

The probe is a plain socket plus hiredis, the same packer and parser the
backend runs on: one PING needs no client library of its own.
"""

from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from improto.backends.interface import BackendUnavailable

_NODE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@attrs.frozen
class RedisAddress:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def display(self) -> str:
        """Where we connect, without credentials: safe for logs and health."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def auth_args(self) -> list[str] | None:
        """The arguments of ``AUTH``, or ``None`` when there is no password."""
        if self.password is None:
            return None
        return [self.username, self.password] if self.username else [self.password]


@attrs.frozen
class RedisOptions:
    """Tunables; each may also be given as a query parameter of the URL."""

    prefix: str = "improto:"
    node_id: str | None = None
    heartbeat_interval: float = 5.0
    heartbeat_ttl: float = 15.0
    reconnect_initial_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    command_timeout: float = 5.0
    connect_timeout: float = 5.0
    #: Coalesce the commands of one reactor turn into one write. Off only
    #: to measure what it buys (``benchmarks/bench_redis_batching.py``).
    batch_writes: bool = True

    def __attrs_post_init__(self) -> None:
        if self.node_id is not None and not _NODE_ID.fullmatch(self.node_id):
            raise ValueError(f"node id {self.node_id!r} must be 1-64 of [A-Za-z0-9._:-]")
        for name in _FLOAT_OPTIONS:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ValueError("heartbeat_ttl must exceed heartbeat_interval")


_FLOAT_OPTIONS = tuple(a.name for a in attrs.fields(RedisOptions) if a.type in ("float", float))


def parse_redis_url(url: str) -> tuple[RedisAddress, dict[str, Any]]:
    """
    Split ``redis://[[user]:password@]host[:port][/db][?option=value...]``.

    Raises ``ValueError`` with a one-line message naming what is wrong and
    never echoing the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"bad Redis URL: {e}") from None
    shown = _redact(url, parts.password)
    if parts.scheme != "redis":
        raise ValueError(f"bad Redis URL {shown!r}: scheme must be redis://")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad Redis URL {shown!r}: port must be an integer in 1-65535")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"bad Redis URL {shown!r}: database must be a non-negative integer")
    address = RedisAddress(
        host=unquote(parts.hostname or "localhost"),
        port=port or 6379,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
    return address, _query_options(parts.query, shown)


def _query_options(query: str, shown: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    known = {a.name for a in attrs.fields(RedisOptions)}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            raise ValueError(f"bad Redis URL {shown!r}: unknown option {name!r}")
        if name in _FLOAT_OPTIONS:
            try:
                options[name] = float(value)
            except ValueError:
                raise ValueError(f"bad Redis URL {shown!r}: {name} must be a number") from None
        elif name == "batch_writes":
            options[name] = value.lower() not in ("0", "false", "no", "off")
        else:
            options[name] = value
    return options


def parse_hosts_url(url: str, scheme: str) -> tuple[list[tuple[str, int]], RedisAddress, list[str], dict[str, Any]]:
    """
    Split ``SCHEME://[[user]:password@]host[:port][,host[:port]...][/path...][?options]``:
    the hosts (port 6379 by default), the credentials (in a
    :class:`RedisAddress` whose host is the first one), the path's
    segments and the options. For ``redis-cluster://`` and ``redis-sentinel://``.
    """
    head, sep, rest = url.partition("://")
    if not sep or head != scheme:
        raise ValueError(f"bad Redis URL {url!r}: scheme must be {scheme}://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    shown = _redact(url, userinfo.partition(":")[2] if at else None)
    addresses: list[tuple[str, int]] = []
    for item in hosts.split(","):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", item)
        if match is None:
            raise ValueError(f"bad Redis URL {shown!r}: {item!r} is not host[:port]")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4) or 6379)
        if not 0 < port < 65536:
            raise ValueError(f"bad Redis URL {shown!r}: port must be an integer in 1-65535")
        addresses.append((unquote(host), port))
    address = RedisAddress(addresses[0][0], addresses[0][1], 0, username, password)
    segments = [unquote(p) for p in path.split("/") if p]
    return addresses, address, segments, _query_options(query, shown)


def configure_cluster(url: str, **options: Any) -> tuple[list[tuple[str, int]], RedisAddress, RedisOptions]:
    """``redis-cluster://[[user]:password@]host:port[,host:port...][/][?options]``: seeds, credentials, options."""
    seeds, address, segments, from_query = parse_hosts_url(url, "redis-cluster")
    if segments not in ([], ["0"]):
        raise ValueError(f"bad Redis URL {_redact(url, address.password)!r}: Redis Cluster has only database 0")
    return seeds, address, _options({**from_query, **options})


def configure_sentinel(url: str, **options: Any) -> tuple[list[tuple[str, int]], str, RedisAddress, RedisOptions]:
    """
    ``redis-sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?options]``:
    the sentinels, the master's name, the master's credentials and db, the options.
    """
    sentinels, address, segments, from_query = parse_hosts_url(url, "redis-sentinel")
    shown = _redact(url, address.password)
    if not 1 <= len(segments) <= 2:
        raise ValueError(f"bad Redis URL {shown!r}: expected /MASTERNAME or /MASTERNAME/DB after the sentinels")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"bad Redis URL {shown!r}: database must be a non-negative integer")
    db = int(segments[1]) if len(segments) == 2 else 0
    return sentinels, segments[0], attrs.evolve(address, db=db), _options({**from_query, **options})


def _options(merged: dict[str, Any]) -> RedisOptions:
    try:
        return RedisOptions(**{k: v for k, v in merged.items() if v is not None})
    except TypeError as e:
        raise ValueError(f"bad Redis backend option: {e}") from None


def configure(url: str, **options: Any) -> tuple[RedisAddress, RedisOptions]:
    """The URL's address, and its query options overridden by ``options`` (``None`` ones ignored)."""
    address, from_query = parse_redis_url(url)
    merged = {**from_query, **{k: v for k, v in options.items() if v is not None}}
    try:
        return address, RedisOptions(**merged)
    except TypeError as e:
        raise ValueError(f"bad Redis backend option: {e}") from None


def _redact(url: str, password: str | None) -> str:
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)


def one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


def refusal(address: RedisAddress, command: str, error: Exception) -> BackendUnavailable:
    """How a set-up command's error reply reads, the same at start-up and on the reactor."""
    message = one_line(str(error))
    where = address.display
    if command == "AUTH" or message.startswith(("NOAUTH", "WRONGPASS")):
        return BackendUnavailable(f"Redis at {where} refused AUTH: {message}")
    if command == "SELECT":
        return BackendUnavailable(f"Redis at {where} refused db {address.db}: {message}")
    return BackendUnavailable(f"Redis at {where} refused {command}: {message}")


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """
    Connect, authenticate, select the db and PING, blocking.

    For command-line validation before the reactor runs (``twistd
    improto`` options), so a wrong address is a one-line usage error
    rather than a traceback; never call it on the reactor thread. Raises
    ``ValueError`` for a malformed URL and :class:`BackendUnavailable` for
    everything else, each in one line without the password.
    """
    from improto.backends.redis.client import RedisProtocolError, make_reader, pack

    address, _ = parse_redis_url(url)
    where = address.display
    commands: list[tuple[str, list[Any]]] = []
    auth = address.auth_args()
    if auth is not None:
        commands.append(("AUTH", auth))
    if address.db:
        commands.append(("SELECT", [address.db]))
    commands.append(("PING", []))
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except socket.gaierror as e:
        raise BackendUnavailable(f"cannot reach Redis at {where}: cannot resolve host ({one_line(e.strerror or str(e))})") from None
    except OSError as e:
        raise BackendUnavailable(f"cannot reach Redis at {where}: {_os_reason(e, timeout)}") from None
    reader = make_reader()
    with sock:
        try:
            sock.sendall(b"".join(pack(name, *args) for name, args in commands))
            for name, _args in commands:
                reply = _read_reply(sock, reader)
                if isinstance(reply, Exception):
                    raise refusal(address, name, reply)
        except OSError as e:
            raise BackendUnavailable(f"cannot reach Redis at {where}: {_os_reason(e, timeout)}") from None
        except RedisProtocolError as e:
            raise BackendUnavailable(f"Redis at {where}: protocol error: {one_line(str(e))}") from None


def _read_reply(sock: socket.socket, reader: Any) -> Any:
    while (reply := reader.gets()) is False:
        data = sock.recv(65536)
        if not data:
            raise OSError("connection closed by Redis")
        reader.feed(data)
    return reply


def _os_reason(error: OSError, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    return one_line(error.strerror or str(error) or type(error).__name__)
