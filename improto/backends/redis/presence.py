"""
Cluster-wide presence in Redis, surviving the death of nodes.

Keys (``P`` is the backend's prefix)::

    P presence:<scope>   hash  member -> space-separated ids of nodes having it
    P node:<node_id>     string, expires: the node's heartbeat

A node is live while its heartbeat key exists; it refreshes the key every
``heartbeat_interval`` and it expires ``heartbeat_ttl`` after the last
refresh. Entries of dead nodes are not swept by anyone: each script below
skips them and deletes them on the way, so presence of a crashed node
vanishes within ``heartbeat_ttl`` for readers and from Redis at the next
touch of that member (or of the scope, for ``members``).

Every operation is one Lua script, so "was the member absent on every
live node" is answered atomically with the change: two nodes adding the
same member concurrently cannot both see ``True``. The changes of one
reactor turn (a connection's "online" and lobby join, say) go in one call
of the ``CHANGES`` script (:class:`PresenceBatch`, see
:mod:`improto.backends.redis.scripts`), each with its announcement.

Scripts read heartbeat keys they do not declare in ``KEYS``; that is
fine on a standalone Redis (the supported deployment) but not on Redis
Cluster.

:class:`PresenceStore` is the commands; :class:`NodePresence` is this
node's memory of what it told Redis, so that it can tell it again after
a reconnect or an expired heartbeat.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.backends.interface import Answer, BackendUnavailable
from improto.backends.redis.client import RespConnection, as_unavailable
from improto.backends.redis.scripts import ERROR_TEXT, Script, ScriptBatch

#: A channel key and an encoded envelope, published by the script on a change.
Announcement = tuple[bytes, bytes]

# Shared prologue: ARGV[1] heartbeat key prefix, ARGV[2] this node's id.
# ``live(n)`` caches EXISTS per node for the duration of one script.
_PROLOGUE = """
local node_prefix, me = ARGV[1], ARGV[2]
local cache = {}
local function live(n)
  if n == me then return true end
  local v = cache[n]
  if v == nil then
    v = redis.call('EXISTS', node_prefix .. n) == 1
    cache[n] = v
  end
  return v
end
local function others(raw)
  local keep, mine = {}, false
  if raw then
    for n in string.gmatch(raw, '%S+') do
      if n == me then mine = true elseif live(n) then keep[#keep + 1] = n end
    end
  end
  return keep, mine
end
"""

# ADD and REMOVE answer 1 if the member was absent on every live node
# before (present on this node only after), else 0.
_CHANGE = """
local function add(key, member)
  local keep, mine = others(redis.call('HGET', key, member))
  local was_absent = (#keep == 0 and not mine) and 1 or 0
  keep[#keep + 1] = me
  redis.call('HSET', key, member, table.concat(keep, ' '))
  return was_absent
end
local function remove(key, member)
  local raw = redis.call('HGET', key, member)
  if not raw then return 0 end
  local keep, mine = others(raw)
  if #keep == 0 then
    redis.call('HDEL', key, member)
  else
    redis.call('HSET', key, member, table.concat(keep, ' '))
  end
  return (mine and #keep == 0) and 1 or 0
end
"""

# One change: KEYS[1] the scope's hash, ARGV[3] the member (Redis Cluster).
_ADD = _PROLOGUE + _CHANGE + "return add(KEYS[1], ARGV[3])\n"
_REMOVE = _PROLOGUE + _CHANGE + "return remove(KEYS[1], ARGV[3])\n"

# The changes of one reactor turn (PresenceBatch), each with its announcement:
# KEYS, one per change: the scope's hash; ARGV after the prologue's, 4 per
# change: 'a' (add) or 'r' (remove), the member, and a channel and a payload
# to PUBLISH if the answer is 1 (none: empty channel). Replies one answer per
# change, or the error Redis gave it (pcall: each change fails alone).
_CHANGES = (
    _PROLOGUE
    + _CHANGE
    + ERROR_TEXT
    + """
local function change(key, op, member, channel, payload)
  local changed = (op == 'a' and add or remove)(key, member)
  if changed == 1 and channel ~= '' then redis.call('PUBLISH', channel, payload) end
  return changed
end
local out = {}
for k = 1, #KEYS do
  local a = 4 * k - 1
  local ok, changed = pcall(change, KEYS[k], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  out[k] = ok and changed or error_text(changed)
end
return out
"""
)

_MEMBERS = (
    _PROLOGUE
    + """
local flat = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #flat, 2 do
  local member, raw, keep, total = flat[i], flat[i + 1], {}, 0
  for n in string.gmatch(raw, '%S+') do
    total = total + 1
    if live(n) then keep[#keep + 1] = n end
  end
  if #keep == 0 then
    redis.call('HDEL', KEYS[1], member)
  else
    if #keep ~= total then redis.call('HSET', KEYS[1], member, table.concat(keep, ' ')) end
    out[#out + 1] = member
  end
end
return out
"""
)

_HEARTBEAT = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return existed
"""


ADD = Script(_ADD)
REMOVE = Script(_REMOVE)
MEMBERS = Script(_MEMBERS)
HEARTBEAT = Script(_HEARTBEAT)
CHANGES = Script(_CHANGES)
ALL_SCRIPTS = (CHANGES, ADD, REMOVE, MEMBERS, HEARTBEAT)


class PresenceBatch(ScriptBatch):
    """The presence changes of one reactor turn, one ``CHANGES`` script call."""

    script = CHANGES
    what = "presence change"
    keys_per_part = 1
    args_per_part = 4

    def answer(self, d: Answer[Any], reply: list[Any], index: int) -> None:
        changed = reply[index]
        if type(changed) is bytes:
            self.refuse(d, changed)
        else:
            d.callback(changed == 1)


@attrs.define
class PresenceStore:
    """This node's view of the presence keys; every call is one command."""

    prefix: bytes
    node_id: str
    heartbeat_ttl_ms: int

    @property
    def heartbeat_key(self) -> bytes:
        return self.prefix + b"node:" + self.node_id.encode("ascii")

    def scope_key(self, scope: str) -> bytes:
        return self.prefix + b"presence:" + scope.encode("utf-8")

    def _args(self, *extra: str | bytes) -> list[bytes | str | int]:
        return [self.prefix + b"node:", self.node_id, *extra]

    def load_scripts(self, conn: RespConnection) -> Deferred[Any]:
        """Load before serving, so that no pipelined call meets NOSCRIPT."""
        return gatherResults([script.load(conn) for script in ALL_SCRIPTS], consumeErrors=True)

    def heartbeat(self, conn: RespConnection) -> Deferred[bool]:
        """Refresh liveness; fires ``False`` if the key had already expired."""
        d = HEARTBEAT.run(conn, [self.heartbeat_key], [b"1", self.heartbeat_ttl_ms])
        return d.addCallback(bool)

    def goodbye(self, conn: RespConnection) -> Deferred[Any]:
        return conn.execute(b"DEL", self.heartbeat_key)

    def add(self, conn: RespConnection, scope: str, member: str,
            announce: Announcement | None = None) -> Deferred[bool]:
        """
        ``announce`` (channel key, payload) is published if the answer is
        True. A part of this turn's ``CHANGES`` script (:class:`PresenceBatch`).
        """
        return self._change(conn, b"a", scope, member, announce)

    def remove(self, conn: RespConnection, scope: str, member: str,
               announce: Announcement | None = None) -> Deferred[bool]:
        return self._change(conn, b"r", scope, member, announce)

    def _change(self, conn: RespConnection, op: bytes, scope: str, member: str,
                announce: Announcement | None) -> Deferred[bool]:
        channel, payload = announce or (b"", b"")
        return PresenceBatch.joined(
            conn, self._args(), [self.scope_key(scope)], [op, member, channel, payload])

    def members(self, conn: RespConnection, scope: str) -> Deferred[list[str]]:
        d = MEMBERS.run(conn, [self.scope_key(scope)], self._args())
        return d.addCallback(lambda raw: sorted(m.decode("utf-8", "replace") for m in raw))

_log = Logger()

Entry = tuple[str, str]


class NodePresence:
    """
    The entries this node holds, and those whose removal Redis has not
    confirmed (tombstones): both are replayed by :meth:`reregister`, so
    Redis converges on this node's view whatever was lost in between.
    """

    def __init__(self, store: PresenceStore) -> None:
        self.store = store
        self.entries: set[Entry] = set()
        self.tombstones: set[Entry] = set()

    def add(self, conn: RespConnection, scope: str, member: str,
            announce: Announcement | None = None) -> Deferred[bool]:
        entry = (scope, member)
        self.tombstones.discard(entry)
        self.entries.add(entry)

        def failed(failure: Failure) -> Failure:
            self.entries.discard(entry)
            self.tombstones.add(entry)
            return as_unavailable(failure, "presence_add")

        return self.store.add(conn, scope, member, announce).addErrback(failed)

    def remove(self, conn: RespConnection, scope: str, member: str,
               announce: Announcement | None = None) -> Deferred[bool]:
        entry = (scope, member)
        self.entries.discard(entry)

        def failed(failure: Failure) -> Failure:
            self.tombstones.add(entry)
            return as_unavailable(failure, "presence_remove")

        return self.store.remove(conn, scope, member, announce).addErrback(failed)

    def forget(self, scope: str, member: str) -> None:
        """Remove while Redis cannot be told: the removal is replayed on reconnect."""
        entry = (scope, member)
        self.entries.discard(entry)
        self.tombstones.add(entry)

    def reregister(self, conn: RespConnection) -> Deferred[Any]:
        """Make Redis hold exactly this node's entries (after a reconnect or expiry)."""
        tombstones = list(self.tombstones)
        calls = [self.store.remove(conn, scope, member) for scope, member in tombstones]
        calls += [self.store.add(conn, scope, member) for scope, member in self.entries]

        def done(_: object) -> None:
            self.tombstones.difference_update(tombstones)

        return gatherResults(calls, consumeErrors=True).addCallback(done)

    def goodbye(self, conn: RespConnection | None) -> Deferred[Any] | None:
        """Remove every entry and the heartbeat, forgetting them all."""
        entries = self.entries | self.tombstones
        self.entries.clear()
        self.tombstones.clear()
        if conn is None:
            return None
        calls = [self.store.remove(conn, scope, member) for scope, member in entries]
        calls.append(self.store.goodbye(conn))
        return gatherResults(calls, consumeErrors=True)

    def beat(self, conn: RespConnection) -> None:
        """Refresh the heartbeat; re-register everything if it had expired."""
        self.store.heartbeat(conn).addCallbacks(lambda existed: self._beaten(conn, existed), self._beat_failed)

    def _beaten(self, conn: RespConnection, existed: bool) -> None:
        if existed or not (self.entries or self.tombstones):
            return
        _log.warn(
            "Redis backend: heartbeat of node {node_id} had expired (reactor stalled for "
            "over {ttl}s?); re-registering {entries} presence entr(y/ies)",
            node_id=self.store.node_id,
            ttl=self.store.heartbeat_ttl_ms / 1000,
            entries=len(self.entries),
        )
        self.reregister(conn).addErrback(self._beat_failed)

    def _beat_failed(self, failure: Failure) -> None:
        if not failure.check(BackendUnavailable):
            _log.failure("Redis backend: heartbeat failed", failure, node_id=self.store.node_id)
