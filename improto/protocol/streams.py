"""
The durable half of the native dialect: positions, history, resume, acks.

Every stored group or private message has a ``stream`` (``group:<g>`` or
``user:<u>``) and a ``seq`` in it. Native clients get both on every such
message; seed pages get the frame they always got (see docs/protocol.md).
Sans IO, like :mod:`improto.protocol.codec`.
"""

from __future__ import annotations

from typing import Any

import attrs

from improto.protocol import codec
from improto.protocol.codec import ErrorCode, ProtocolError, encode
from improto.protocol.commands import _group
from improto.protocol.names import MAX_GROUP_LENGTH, check_name, normalize_name

#: Most streams one resume may name.
MAX_RESUME_STREAMS = 64
#: seq values above this are refused as malformed (JSON numbers in JS stay exact).
MAX_SEQ = 2**53 - 1


@attrs.frozen
class History:
    #: ``group:<g>``, or None for the caller's own private stream.
    stream: str | None
    after: int | None
    before: int | None
    limit: int | None
    id: str | None = None
    native = True


@attrs.frozen
class Resume:
    #: stream -> the last seq the client saw in it.
    streams: dict[str, int]
    id: str | None = None
    native = True


def _seq(obj: dict[str, Any], key: str, request_id: str | None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"Field '{key}' must be an integer from 0 to {MAX_SEQ}.", request_id
        )
    return value


def check_stream(name: object, request_id: str | None) -> str:
    """A stream name in its canonical spelling (names are NFKC, as users are)."""
    if not isinstance(name, str) or not name.startswith(("group:", "user:")) or name.endswith(":"):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"Stream {str(name)[:80]!r} is not 'group:<name>' or 'user:<name>'.",
            request_id,
        )
    kind, _, rest = name.partition(":")
    if kind == "user":
        return "user:" + normalize_name(rest)
    try:
        return "group:" + check_name(rest, "group name", MAX_GROUP_LENGTH)
    except ProtocolError as e:
        raise attrs.evolve(e, id=request_id) from None


def decode_history(obj: dict[str, Any], request_id: str | None) -> History:
    group = obj.get("group")
    stream: str | None
    if obj.get("private") is True:
        if group is not None:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, "Give either 'group' or 'private', not both.", request_id
            )
        stream = None
    elif group is not None:
        stream = "group:" + _group(obj, request_id)
    else:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "A history request needs 'group' or '\"private\": true'.", request_id
        )
    after, before = _seq(obj, "after", request_id), _seq(obj, "before", request_id)
    if after is not None and before is not None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "Give either 'after' or 'before', not both.", request_id)
    limit = obj.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'limit' must be a positive integer.", request_id)
    return History(stream, after, before, limit, request_id)


def decode_resume(obj: dict[str, Any], request_id: str | None) -> Resume:
    streams = obj.get("streams")
    if not isinstance(streams, dict):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "Field 'streams' must be an object of stream: seq.", request_id
        )
    return Resume(_positions(streams, request_id), request_id)


def _positions(streams: dict[Any, Any], request_id: str | None) -> dict[str, int]:
    if len(streams) > MAX_RESUME_STREAMS:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"A resume may name at most {MAX_RESUME_STREAMS} streams.", request_id
        )
    positions: dict[str, int] = {}
    for name, seq in streams.items():
        positions[check_stream(name, request_id)] = _seq({"seq": seq}, "seq", request_id) or 0
    return positions


def parse_resume_param(text: str) -> Resume:
    """``?resume=group:lobby:41,user:alice:7`` (the seq after the last colon)."""
    raw: dict[str, Any] = {}
    for item in text.split(","):
        if not item:
            continue
        stream, sep, seq = item.rpartition(":")
        if not sep or not seq.isdigit() or len(seq) > 16:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"Resume position {item[:80]!r} is not '<stream>:<seq>'."
            )
        raw[stream] = int(seq)
    return Resume(_positions(raw, None))


def positioned(data: bytes, stream: str, seq: int) -> bytes:
    """
    ``data`` (a JSON object from :mod:`codec`) with ``stream`` and ``seq``
    added, by splicing bytes: encoded once per envelope, not per member.
    """
    if not (data.endswith(b"}") and len(data) > 2):
        return data
    return b"".join((data[:-1], b',"stream":', encode_str(stream), b',"seq":', str(seq).encode(), b"}"))


def encode_str(text: str) -> bytes:
    return codec.encode_texts({"s": text})[5:-1]


def ack(request_id: str, stream: str, seq: int, stored: bool) -> bytes:
    status = "stored" if stored else "delivered"
    return codec.encode_texts({"type": "ack", "id": request_id, "seq": seq, "stream": stream, "status": status})


def history_reply(
    stream: str, frames: list[bytes], first_seq: int, last_seq: int, request_id: str | None
) -> bytes:
    tail: dict[str, Any] = {"first_seq": first_seq, "last_seq": last_seq}
    if request_id is not None:
        tail["id"] = request_id
    return b"".join((
        b'{"type":"history","stream":', encode_str(stream), b',"messages":[',
        b",".join(frames), b"],", encode(tail)[1:],
    ))


def gap(stream: str, from_seq: int, to_seq: int) -> bytes:
    return encode({"type": "gap", "stream": stream, "from_seq": from_seq, "to_seq": to_seq})


def resumed(streams: dict[str, int], request_id: str | None) -> bytes:
    body: dict[str, Any] = {"type": "resumed", "streams": streams}
    if request_id is not None:
        body["id"] = request_id
    return encode(body)
