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
``PRIVATE`` is a private message's whole send in one script (the
recipient's ``seen`` key read, then its stream and the sender's copy
appended, or both published live if it was not seen: ``IPrivateBackend``),
and every private message of one reactor turn goes in one call of it
(:class:`PrivateBatch`, see :mod:`improto.backends.redis.scripts`); its
keys span two users' slots, so Redis Cluster does not load it and makes
the plain calls instead.
The log is trimmed to exactly ``size`` entries; entries older than
``age`` are dropped when history is read, and the whole log expires
``age`` after its last append. Durability is Redis's: with AOF and
``appendfsync always`` an acked message survives a Redis restart (see
docs/protocol.md).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from improto.backends.interface import Answer, Appended, Envelope, HistoryPage, Retention
from improto.backends.redis.client import RespConnection
from improto.backends.redis.scripts import ERROR_TEXT, Script, ScriptBatch
from improto.backends.redis.wire import decode_envelope, encode_head

# Redis's clock in ms, read once per script and only if asked: a script
# that only publishes skips TIME.
_CLOCK = """
local now = nil
local function now_ms()
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end
"""

# Shared by every append of a script: size (a number), age_ms, idem_ttl_ms.
_APPEND_FUNCTION = _CLOCK + """
local function append(seq_key, log_key, idem_key, channel, head, data, size, age_ms, idem_ttl_ms)
  if idem_key then
    local prev = redis.call('GET', idem_key)
    if prev then return 1, prev end
  end
  local s = string.format('%d', redis.call('INCR', seq_key))
  local payload = head .. string.char(#s) .. s .. data
  if size > 0 then
    redis.call('XADD', log_key, 'MAXLEN', size, s .. '-0', 'e', payload, 't', string.format('%d', now_ms()))
    redis.call('PEXPIRE', log_key, age_ms)
  end
  local n = redis.call('PUBLISH', channel, payload)
  local result = s .. ':' .. n
  if idem_key then redis.call('SET', idem_key, result, 'PX', idem_ttl_ms) end
  return 0, result
end
"""

# KEYS: seq, log[, idem]  ARGV: channel, head, data, size, age_ms, idem_ttl_ms
_APPEND = (
    _APPEND_FUNCTION
    + """
local duplicate, result = append(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3],
                                 tonumber(ARGV[4]), ARGV[5], ARGV[6])
return {duplicate, result}
"""
)

# IPrivateBackend.send_private for every private message of a reactor turn
# (PrivateBatch). KEYS, 6 per message: seq, log, seen, idem, copy seq, copy log.
# ARGV: size, age_ms, idem_ttl_ms, channel prefix, then 4 per message: head (its
# stream names the channel), data, copy stream ('' = no copy), flags: letters of
# s (check seen), i (idempotent), e (copy only elsewhere: live, only if another
# node subscribes, this one being one). The copy's head is the message's with
# the native audience and the copy stream. Replies 2 values per message:
# {2, nodes} when unseen (published live, as version 1: the head without its
# stream, see wire.py), {duplicate, "seq:nodes"} when appended, {3, error} when
# Redis refused one of its commands: each message fails alone (pcall), as it
# would in a script of its own.
_PRIVATE = (
    _APPEND_FUNCTION
    + ERROR_TEXT
    + """
local size, age_ms, idem_ttl_ms, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local function has(flags, letter) return string.find(flags, letter, 1, true) ~= nil end
local function send(k, a)
  local head, data, copy_stream, flags = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local stream_len = string.byte(head, 10) * 256 + string.byte(head, 11)
  local channel = prefix .. string.sub(head, #head - stream_len + 1)
  -- flags byte, then the three string lengths; then the strings themselves
  local flags_byte, lengths = string.sub(head, 2, 2), string.sub(head, 4, 9)
  local strings = string.sub(head, 12, #head - stream_len)
  local copy = copy_stream ~= ''
  local copy_channel = prefix .. copy_stream
  if has(flags, 's') and not redis.call('GET', KEYS[k + 2]) then
    local n = redis.call('PUBLISH', channel, '\\1' .. string.sub(head, 2, 3) .. lengths .. strings .. data)
    if n > 0 and copy and (not has(flags, 'e') or redis.call('PUBSUB', 'NUMSUB', copy_channel)[2] > 1) then
      redis.call('PUBLISH', copy_channel, '\\1' .. flags_byte .. '\\1' .. lengths .. strings .. data)
    end
    return 2, n
  end
  local idem = has(flags, 'i') and KEYS[k + 3] or nil
  local duplicate, result = append(KEYS[k], KEYS[k + 1], idem, channel, head, data, size, age_ms, idem_ttl_ms)
  if duplicate == 0 and copy then
    local copy_head = '\\2' .. flags_byte .. '\\1' .. lengths
      .. string.char(math.floor(#copy_stream / 256), #copy_stream % 256) .. strings .. copy_stream
    append(KEYS[k + 4], KEYS[k + 5], nil, copy_channel, copy_head, data, size, age_ms, idem_ttl_ms)
  end
  return duplicate, result
end
local out = {}
local k, a = 1, 5
while a <= #ARGV do
  local ok, kind, result = pcall(send, k, a)
  if not ok then kind, result = 3, error_text(kind) end
  out[#out + 1] = kind
  out[#out + 1] = result
  k, a = k + 6, a + 4
end
return out
"""
)

# KEYS: seq, log  ARGV: after, limit, before ('' = none), age_ms
_HISTORY = (
    _CLOCK
    + """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local cutoff = now_ms() - tonumber(ARGV[4])
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
PRIVATE = Script(_PRIVATE)
HISTORY = Script(_HISTORY)
MARK_SEEN = Script(_MARK_SEEN)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _appended(reply: list[Any]) -> Appended:
    duplicate, result = reply
    seq, receivers = result.split(b":")
    return Appended(int(seq), int(receivers), bool(duplicate))


#: The PRIVATE script's flags by (check seen, idempotent, copy only elsewhere).
_PRIVATE_FLAGS = {
    (seen, idempotent, elsewhere): "".join(
        letter for letter, on in (("s", seen), ("i", idempotent), ("e", elsewhere)) if on)
    for seen in (False, True) for idempotent in (False, True) for elsewhere in (False, True)
}


class PrivateBatch(ScriptBatch):
    """The private messages of one reactor turn, one ``PRIVATE`` script call."""

    script = PRIVATE
    what = "append"
    keys_per_part = 6
    args_per_part = 4

    def answer(self, d: Answer[Any], reply: list[Any], index: int) -> None:
        kind, result = reply[2 * index], reply[2 * index + 1]
        if kind == 2:
            d.callback(result)
        elif kind == 3:
            self.refuse(d, result)
        else:
            d.callback(_appended([kind, result]))


class StreamStore:
    """The stream keys of one prefix; every call is one command."""

    def __init__(self, prefix: bytes, sharded: bool = False) -> None:
        self.prefix = prefix
        self._append = APPEND_SHARDED if sharded else APPEND
        # A private message's two streams are in different cluster slots.
        self._scripts = [self._append, HISTORY, MARK_SEEN] + ([] if sharded else [PRIVATE])
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._heads: dict[tuple[Any, ...], bytes] = {}
        # The PRIVATE script's common ARGV, per setting (one in practice).
        self._private_common: dict[tuple[int, float, float, bytes], list[bytes | str | int]] = {}

    def key(self, stream: str, suffix: str) -> bytes:
        return b"".join((self.prefix, b"{", stream.encode("utf-8"), b"}:", suffix.encode("utf-8")))

    def _stream_keys(self, stream: str) -> tuple[bytes, bytes, bytes]:
        """``stream``'s seq, log and seen keys, remembered (a private message needs five)."""
        keys = self._keys.get(stream)
        if keys is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            keys = self._keys[stream] = (self.key(stream, "seq"), self.key(stream, "log"), self.key(stream, "seen"))
        return keys

    def _head(self, envelope: Envelope, stream: str) -> bytes:
        """
        :func:`encode_head` of ``envelope`` in ``stream``, remembered: every
        message a session sends to one user or group has the same head, and
        encoding it each time was about a fifth of :meth:`send_private`.
        """
        key = (stream, envelope.origin_node, envelope.origin_session, envelope.exclude_session,
               envelope.binary, envelope.audience)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 4096:
                self._heads.clear()
            head = self._heads[key] = encode_head(envelope, stream)
        return head

    def load_scripts(self, conn: RespConnection) -> Deferred[Any]:
        return gatherResults([s.load(conn) for s in self._scripts], consumeErrors=True)

    def append(
        self, conn: RespConnection, channel_key: bytes, stream: str, envelope: Envelope,
        retention: Retention, idempotency_key: str | None, idempotency_ttl: float,
    ) -> Deferred[Appended]:
        keys = [self.key(stream, "seq"), self.key(stream, "log")]
        if idempotency_key is not None and idempotency_ttl > 0:
            keys.append(self.key(stream, "idem:" + idempotency_key))
        args: list[bytes | str | int] = [
            channel_key, self._head(envelope, stream), envelope.data,
            retention.size, _ms(retention.age), _ms(idempotency_ttl),
        ]

        return self._append.run(conn, keys, args).addCallback(_appended)

    def send_private(
        self, conn: RespConnection, answer: Answer[Appended | int], channel_prefix: bytes, stream: str,
        envelope: Envelope, copy_stream: str | None, only_if_seen: str | None, retention: Retention,
        idempotency_key: str | None, idempotency_ttl: float, copy_only_elsewhere: bool,
    ) -> None:
        """
        See :class:`~improto.backends.interface.IPrivateBackend`: a part of
        this turn's ``PRIVATE`` script (:class:`PrivateBatch`). ``answer``
        fails with ``BackendUnavailable`` as the backend's other calls do.
        """
        idempotent = idempotency_key is not None and idempotency_ttl > 0
        # Keys a flag leaves unused are still declared, as a script's keys must be.
        seq, log, _ = self._stream_keys(stream)
        copy_seq, copy_log, _ = self._stream_keys(copy_stream) if copy_stream is not None else (seq, log, b"")
        keys = [
            seq, log, self._stream_keys("user:" + only_if_seen)[2] if only_if_seen is not None else seq,
            self.key(stream, f"idem:{idempotency_key}") if idempotent else seq,
            copy_seq, copy_log,
        ]
        flags = _PRIVATE_FLAGS[(only_if_seen is not None, idempotent, copy_only_elsewhere)]
        args: list[bytes | str | int] = [self._head(envelope, stream), envelope.data, copy_stream or "", flags]
        setting = (retention.size, retention.age, idempotency_ttl, channel_prefix)
        common = self._private_common.get(setting)
        if common is None:
            common = self._private_common[setting] = [
                retention.size, _ms(retention.age), _ms(idempotency_ttl), channel_prefix]
        PrivateBatch.join(conn, common, keys, args, answer)

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
