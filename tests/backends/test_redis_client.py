"""
The RESP connection without a Redis: hiredis packs and parses, the
connection matches replies, routes pushes, batches writes and times out.
Also the envelope wire format.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from improto.backends.interface import Audience, BackendUnavailable, Envelope, positioned
from improto.backends.redis.client import RedisReplyError, RespConnection, pack
from improto.backends.redis.wire import (
    WireError,
    decode_envelope,
    encode_envelope,
    encode_head,
    native_and_unpositioned,
)


def test_wire_round_trip_and_errors() -> None:
    env = Envelope("n", "s", b"\x00\xff" * 10, True, Audience.NATIVE, "x")
    payload = encode_envelope(env)
    assert decode_envelope(payload) == env
    assert len(payload) == 9 + 1 + 1 + 1 + 20
    with pytest.raises(WireError, match="version 9"):
        decode_envelope(b"\x09" + payload[1:])
    with pytest.raises(WireError, match="header"):
        decode_envelope(payload[:5])
    with pytest.raises(WireError, match="truncated"):
        decode_envelope(payload[:10])
    with pytest.raises(WireError, match="audience"):
        decode_envelope(payload[:2] + b"\x07" + payload[3:])


def _positioned_payload(env: Envelope, stream: str, seq: bytes) -> bytes:
    """What the append script publishes: the head, then len(seq), seq and the data."""
    return encode_head(env, stream) + bytes([len(seq)]) + seq + env.data


def test_a_positioned_envelope_decodes_with_its_stream_and_seq() -> None:
    env = Envelope("node", "s-1", b'{"msg":"h\xc3\xa9"}', False, Audience.ALL, "s-1")
    decoded = decode_envelope(_positioned_payload(env, "group:caf\u00e9", b"1234"))
    assert decoded == positioned(env, "group:caf\u00e9", 1234)


def _two_pass(payload: bytes) -> Envelope:
    """The decoder of version 2 before it was one pass (a reference to compare with)."""
    import struct

    import attrs

    header, stream_len_s = struct.Struct("!BBBHHH"), struct.Struct("!H")
    end = header.size + stream_len_s.size
    if len(payload) < end:
        raise WireError("shorter than the envelope header")
    (stream_len,) = stream_len_s.unpack_from(payload, header.size)
    _, _, _, node_len, session_len, exclude_len = header.unpack_from(payload)
    strings = end + node_len + session_len + exclude_len
    seq_at = strings + stream_len
    if len(payload) < seq_at + 1:
        raise WireError("truncated envelope header strings")
    seq_len = payload[seq_at]
    raw_seq = payload[seq_at + 1 : seq_at + 1 + seq_len]
    if len(raw_seq) != seq_len or not raw_seq.isdigit():
        raise WireError("bad envelope seq")
    try:
        stream = payload[strings:seq_at].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("envelope header strings are not UTF-8") from None
    v1 = b"".join((b"\x01", payload[1:header.size], payload[end:strings], payload[seq_at + 1 + seq_len :]))
    return attrs.evolve(decode_envelope(v1), stream=stream, seq=int(raw_seq))


def _outcome(decode: Any, payload: bytes) -> Any:
    try:
        return decode(payload)
    except WireError as e:
        return WireError, e.cause in ("shorter than the envelope header", "truncated envelope header strings")


def test_the_one_pass_decoder_answers_as_the_two_pass_one_did() -> None:
    import random

    rng = random.Random(7)
    samples = [
        _positioned_payload(Envelope(n, s, d, b, a, x), stream, seq)
        for n in ("", "node-1") for s in ("", "s\u00e9") for d in (b"", b"\x00data")
        for b in (False, True) for a in (Audience.ALL, Audience.NATIVE) for x in (None, "", "s-2")
        for stream in ("", "user:bob") for seq in (b"1", b"99999")
    ]
    checked = 0
    for payload in samples:
        variants = [payload, payload[: rng.randrange(len(payload) + 1)]]
        for _ in range(6):
            mutated = bytearray(payload)
            mutated[rng.randrange(1, len(mutated))] = rng.randrange(256)
            variants.append(bytes(mutated))
        for variant in variants:
            if variant[:1] != b"\x02":
                continue
            # The same envelope, or an error of the same kind (truncation vs content).
            assert _outcome(decode_envelope, variant) == _outcome(_two_pass, variant), variant
            checked += 1
    assert checked > 2000


def test_a_native_only_envelope_without_a_position_is_told_by_its_header() -> None:
    native = Envelope("n", "", b"{}", audience=Audience.NATIVE)
    assert native_and_unpositioned(encode_envelope(native))
    assert not native_and_unpositioned(encode_envelope(Envelope("n", "", b"{}")))
    assert not native_and_unpositioned(_positioned_payload(native, "user:bob", b"7"))
    assert not native_and_unpositioned(b"") and not native_and_unpositioned(b"\x01")


def test_pack_is_resp_of_bytes_text_and_numbers() -> None:
    assert pack(b"SET", "caf\u00e9", 42, b"\r\n") == (
        b"*4\r\n$3\r\nSET\r\n$5\r\ncaf\xc3\xa9\r\n$2\r\n42\r\n$2\r\n\r\n\r\n"
    )
    with pytest.raises(TypeError):
        pack(b"SET", None)  # type: ignore[arg-type]


class Wired:
    """A RespConnection on a StringTransport and a Clock."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.messages: list[tuple[bytes, bytes]] = []
        options.setdefault("timeout", 2.0)
        self.conn = RespConnection(self.clock, **options)
        self.conn.makeConnection(self.transport)
        self.lost: list[str] = []
        self.conn.lost.addCallback(self.lost.append)

    def written(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def results(self, *ds: Any) -> list[Any]:
        out: list[Any] = []
        for d in ds:
            d.addBoth(out.append)
        return out

    def drop(self) -> None:
        self.conn.connectionLost(Failure(ConnectionDone()))


def test_commands_of_one_turn_share_one_write_and_replies_match_in_order() -> None:
    w = Wired()
    ds = [w.conn.execute(b"PING"), w.conn.execute(b"GET", b"k"), w.conn.execute(b"INCR", b"n")]
    assert w.written() == b""
    w.clock.advance(0)
    assert w.written() == pack(b"PING") + pack(b"GET", b"k") + pack(b"INCR", b"n")
    assert (w.conn.stats.commands, w.conn.stats.writes) == (3, 1)
    results = w.results(*ds)
    stream = b"+PONG\r\n$-1\r\n:7\r\n"
    for i in range(len(stream)):
        w.conn.dataReceived(stream[i : i + 1])
    assert results == [b"PONG", None, 7]
    assert w.conn.stats.replies == 3


def test_unbatched_writes_each_command_at_once() -> None:
    w = Wired(batch_writes=False)
    w.conn.execute(b"PING")
    assert w.written() == pack(b"PING")
    w.conn.execute(b"PING")
    assert w.conn.stats.writes == 2


def test_error_replies_fail_only_their_command() -> None:
    w = Wired()
    results = w.results(w.conn.execute(b"BAD"), w.conn.execute(b"PING"))
    w.conn.dataReceived(b"-ERR unknown command 'BAD'\r\n+PONG\r\n")
    assert isinstance(results[0], Failure) and results[0].check(RedisReplyError)
    assert str(results[0].value) == "ERR unknown command 'BAD'"
    assert results[1] == b"PONG"
    assert w.conn.is_open


def test_message_pushes_go_to_the_handler_between_replies() -> None:
    w = Wired()
    w.conn.on_message = lambda channel, data: w.messages.append((channel, data))
    results = w.results(w.conn.execute(b"SUBSCRIBE", b"ch"), w.conn.execute(b"PING"))
    w.conn.dataReceived(
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\n\r\n\x00\xff\r\n"
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    )
    assert results == [[b"subscribe", b"ch", 1], [b"pong", b""]]
    assert w.messages == [(b"ch", b"\r\n\x00\xff")]


def test_garbage_or_unsolicited_replies_abort_and_fail_pending() -> None:
    w = Wired()
    results = w.results(w.conn.execute(b"PING"))
    w.conn.dataReceived(b"?what\r\n")
    assert w.transport.disconnecting
    w.drop()
    assert results[0].check(BackendUnavailable)
    assert "protocol error from Redis" in str(results[0].value)
    assert w.lost and "protocol error" in w.lost[0]

    w = Wired()
    w.conn.dataReceived(b"+OK\r\n")
    assert w.transport.disconnecting
    w.drop()
    assert w.lost[0].startswith("unsolicited reply from Redis")


def test_an_unanswered_command_times_out_and_replies_restart_the_clock() -> None:
    w = Wired(timeout=2.0)
    first = w.results(w.conn.execute(b"PING"), w.conn.execute(b"PING"))
    w.clock.advance(1.5)
    w.conn.dataReceived(b"+PONG\r\n")
    w.clock.advance(1.5)
    assert not w.transport.disconnecting, "a reply restarts the timeout"
    w.clock.advance(0.6)
    assert w.transport.disconnecting
    w.drop()
    assert first[0] == b"PONG"
    assert first[1].check(BackendUnavailable)
    assert str(first[1].value) == "Redis connection failed: Redis did not answer within 2s"


def test_an_idle_connection_does_not_time_out() -> None:
    w = Wired(timeout=2.0)
    results = w.results(w.conn.execute(b"PING"))
    w.conn.dataReceived(b"+PONG\r\n")
    w.clock.advance(60)
    assert not w.transport.disconnecting
    assert results == [b"PONG"]
    assert w.clock.getDelayedCalls() == []


def test_a_lost_connection_fails_pending_and_later_commands() -> None:
    w = Wired()
    results = w.results(w.conn.execute(b"PING"))
    w.drop()
    assert results[0].check(BackendUnavailable)
    assert w.lost == ["connection closed by Redis"]
    late = w.results(w.conn.execute(b"PING"))
    assert late[0].check(BackendUnavailable)
    assert "connection closed by Redis" in str(late[0].value)


def test_close_flushes_what_is_queued() -> None:
    w = Wired()
    w.conn.execute(b"DEL", b"k")
    w.conn.close()
    assert w.written() == pack(b"DEL", b"k")
    assert w.transport.disconnecting


def test_a_remembered_head_is_the_head_of_every_field_it_depends_on() -> None:
    """
    ``StreamStore._head`` keeps heads by the envelope's header fields and
    the stream: each field changed on its own gets the head
    :func:`encode_head` makes for it, not one remembered for another.
    """
    from improto.backends.redis.streams import StreamStore

    store = StreamStore(b"p:")
    base = Envelope("node-1", "session-1", b"one", False, Audience.ALL, "session-1")
    variants = [
        (base, "user:bob"),
        (base, "user:carol"),
        (Envelope("node-2", "session-1", b"one", False, Audience.ALL, "session-1"), "user:bob"),
        (Envelope("node-1", "session-2", b"one", False, Audience.ALL, "session-1"), "user:bob"),
        (Envelope("node-1", "session-1", b"one", False, Audience.ALL, "session-2"), "user:bob"),
        (Envelope("node-1", "session-1", b"one", False, Audience.ALL, None), "user:bob"),
        (Envelope("node-1", "session-1", b"one", False, Audience.ALL, ""), "user:bob"),
        (Envelope("node-1", "session-1", b"one", True, Audience.ALL, "session-1"), "user:bob"),
        (Envelope("node-1", "session-1", b"one", False, Audience.NATIVE, "session-1"), "user:bob"),
    ]
    heads = [store._head(envelope, stream) for envelope, stream in variants * 2]
    assert heads == [encode_head(envelope, stream) for envelope, stream in variants * 2]
    assert len(set(heads)) == len(variants)
    # Other data, same head: remembered.
    other = Envelope("node-1", "session-1", b"two", False, Audience.ALL, "session-1")
    assert store._head(other, "user:bob") is heads[0]
