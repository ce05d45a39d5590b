"""
History streams in Redis: seq, bounded log, publish, in one script.

Keys (``P`` is the backend's prefix; ``{...}`` is a hash tag, so every key
of one stream lands in one Redis Cluster slot and one script may touch
them all)::

    P{<stream>}:seq          string  the last seq assigned (never expires)
    P{<stream>}:log          stream  entries ``<seq>-0`` with fields
                                     e = the published envelope (wire v2), t = ms
    P{<stream>}:idem:<key>   string  "<seq>:<receivers>" of an idempotent append
    P{user:<u>}:seen         string  the user's inbox cursor; expires with the inbox ttl

``APPEND`` does ``INCR``, ``XADD ... MAXLEN <size>`` and ``PUBLISH`` in one
``EVALSHA``: Redis runs a script atomically, so the seq every node
receives is the one stored, and seqs of a stream are published in order.
On Redis Cluster (``sharded=True``) the script publishes with ``SPUBLISH``:
the cluster backend names a stream's channel ``P{<stream>}``, in the
stream's slot, as Redis requires of a script's keys and shard channels.
The log is trimmed to exactly ``size`` entries; entries older than
``age`` are dropped when history is read, and the whole log expires
``age`` after its last append. Durability is Redis's: with AOF and
``appendfsync always`` an acked message survives a Redis restart (see
docs/protocol.md).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from improto.backends.interface import Appended, Envelope, HistoryPage, Retention
from improto.backends.redis.client import RespConnection
from improto.backends.redis.presence import Script
from improto.backends.redis.wire import decode_envelope, encode_head

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: seq, log[, idem]  ARGV: channel, head, data, size, age_ms, idem_ttl_ms
_APPEND = (
    _NOW_MS
    + """
if KEYS[3] then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {1, prev} end
end
local s = string.format('%d', redis.call('INCR', KEYS[1]))
local payload = ARGV[2] .. string.char(#s) .. s .. ARGV[3]
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, s .. '-0', 'e', payload, 't', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local n = redis.call('PUBLISH', ARGV[1], payload)
local result = s .. ':' .. n
if KEYS[3] then redis.call('SET', KEYS[3], result, 'PX', ARGV[6]) end
return {0, result}
"""
)

# KEYS: seq, log  ARGV: after, limit, before ('' = none), age_ms
_HISTORY = (
    _NOW_MS
    + """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local cutoff = now - tonumber(ARGV[4])
local first = last + 1
local expired = nil
while true do
  local head = redis.call('XRANGE', KEYS[2], expired and ('(' .. expired) or '-', '+', 'COUNT', 16)
  if #head == 0 then break end
  local found = false
  for _, entry in ipairs(head) do
    if tonumber(entry[2][4]) > cutoff then
      first = tonumber(string.match(entry[1], '^(%d+)'))
      found = true
      break
    end
    expired = entry[1]
  end
  if found then break end
end
if expired then redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', first) .. '-0') end
local entries
if ARGV[3] ~= '' then
  entries = redis.call('XREVRANGE', KEYS[2], '(' .. ARGV[3] .. '-0', '(' .. ARGV[1] .. '-0', 'COUNT', ARGV[2])
else
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
local out = {}
for _, entry in ipairs(entries) do out[#out + 1] = entry[2][2] end
return {first, last, out}
"""
)

# KEYS: seen  ARGV: cursor, ttl_ms
_MARK_SEEN = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
local cursor = tonumber(ARGV[1])
if cursor > old then old = cursor end
redis.call('SET', KEYS[1], string.format('%d', old), 'PX', ARGV[2])
return 1
"""

APPEND = Script(_APPEND)
APPEND_SHARDED = Script(_APPEND.replace("'PUBLISH'", "'SPUBLISH'"))
HISTORY = Script(_HISTORY)
MARK_SEEN = Script(_MARK_SEEN)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class StreamStore:
    """The stream keys of one prefix; every call is one command."""

    def __init__(self, prefix: bytes, sharded: bool = False) -> None:
        self.prefix = prefix
        self._append = APPEND_SHARDED if sharded else APPEND

    def key(self, stream: str, suffix: str) -> bytes:
        return b"".join((self.prefix, b"{", stream.encode("utf-8"), b"}:", suffix.encode("utf-8")))

    def load_scripts(self, conn: RespConnection) -> Deferred[Any]:
        return gatherResults([s.load(conn) for s in (self._append, HISTORY, MARK_SEEN)], consumeErrors=True)

    def append(
        self, conn: RespConnection, channel_key: bytes, stream: str, envelope: Envelope,
        retention: Retention, idempotency_key: str | None, idempotency_ttl: float,
    ) -> Deferred[Appended]:
        keys = [self.key(stream, "seq"), self.key(stream, "log")]
        if idempotency_key is not None and idempotency_ttl > 0:
            keys.append(self.key(stream, "idem:" + idempotency_key))
        args: list[bytes | str | int] = [
            channel_key, encode_head(envelope, stream), envelope.data,
            retention.size, _ms(retention.age), _ms(idempotency_ttl),
        ]

        def parse(reply: list[Any]) -> Appended:
            duplicate, result = reply
            seq, receivers = result.split(b":")
            return Appended(int(seq), int(receivers), bool(duplicate))

        return self._append.run(conn, keys, args).addCallback(parse)

    def history(
        self, conn: RespConnection, stream: str, after: int, limit: int, before: int | None,
        retention: Retention,
    ) -> Deferred[HistoryPage]:
        keys = [self.key(stream, "seq"), self.key(stream, "log")]
        args: list[bytes | str | int] = [
            after, limit, "" if before is None else before, _ms(retention.age)]

        def parse(reply: list[Any]) -> HistoryPage:
            first, last, raw = reply
            envelopes = [decode_envelope(payload) for payload in raw]
            if before is not None:
                envelopes.reverse()
            return HistoryPage(envelopes, int(first), int(last))

        return HISTORY.run(conn, keys, args).addCallback(parse)

    def mark_seen(self, conn: RespConnection, user: str, cursor: int, ttl: float) -> Deferred[None]:
        d = MARK_SEEN.run(conn, [self.key("user:" + user, "seen")], [cursor, _ms(ttl)])
        return d.addCallback(lambda _: None)

    def last_seen(self, conn: RespConnection, user: str) -> Deferred[int | None]:
        d = conn.execute(b"GET", self.key("user:" + user, "seen"))
        return d.addCallback(lambda raw: None if raw is None else int(raw))
