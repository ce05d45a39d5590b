"""
The wire protocol, sans IO: text frames in, typed commands or errors out;
typed events in, encoded frames out.

Decoding lives in :mod:`improto.protocol.commands` (strict JSON in
:mod:`improto.protocol.jsontext`), names in :mod:`improto.protocol.names`
and error codes in :mod:`improto.protocol.errors`; this module encodes the
server's frames and re-exports the rest, so ``codec`` stays the one import.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency on CPython
    orjson = None  # type: ignore[assignment]

from improto.protocol.commands import (
    LOBBY,
    MAX_ID_LENGTH,
    Command,
    Join,
    Leave,
    SendToGroup,
    SendToUser,
    Who,
    decode,
    is_native,
    looks_native,
    request_id_of,
)
from improto.protocol.errors import ErrorCode, ProtocolError
from improto.protocol.names import (
    MAX_GROUP_LENGTH,
    MAX_NAME_LENGTH,
    SYSTEM_NAME,
    check_name,
    normalize_name,
)

__all__ = [
    "LOBBY", "MAX_GROUP_LENGTH", "MAX_ID_LENGTH", "MAX_NAME_LENGTH", "NATIVE_SUBPROTOCOL",
    "SYSTEM_NAME", "Command", "ErrorCode", "Join", "Leave", "ProtocolError", "SendToGroup",
    "SendToUser", "Who", "ack", "check_name", "decode", "encode", "error", "group_message",
    "is_native", "looks_native", "normalize_name", "presence", "private_message",
    "request_id_of", "welcome", "who",
]

#: Negotiating this WebSocket subprotocol selects the native dialect.
NATIVE_SUBPROTOCOL = "improto.v1"

#: One encoder for every frame: json.dumps builds a new one per call when
#: options differ from the defaults. ``allow_nan=False``: browsers'
#: JSON.parse rejects NaN and Infinity, so they must never be sent (the
#: decoder refuses them, and server-side ``publish`` gets a ValueError).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII kept as is (Chinese stays readable)."""
    return _ENCODER.encode(obj).encode("utf-8")


def _encode_texts(obj: dict[str, Any]) -> bytes:
    """
    :func:`encode` for a frame built of ``str``, ``bool``, ``None`` and
    64-bit ``int`` values only (and lists of them). For those, orjson's
    output is byte for byte :func:`encode`'s, in a fraction of the time
    (``tests/protocol/test_codec.py`` compares them over every code point);
    floats it would write differently (``1e16`` for ``1e+16``), so a frame
    that may hold one (a client's ``msg`` that is not a string) goes through
    :func:`encode`.
    """
    try:
        return orjson.dumps(obj)
    except TypeError:  # a lone surrogate, say: json's error, as before
        return encode(obj)


#: :func:`_encode_texts` when orjson is installed, else :func:`encode`.
encode_texts = _encode_texts if orjson is not None else encode


def group_message(group: str, sender: str, msg: Any) -> bytes:
    # The seed pages print ``sender`` (004), ``username`` (003 group page)
    # or ``from_user`` (003 private page); every message carries all three,
    # so each page prints every message readably.
    return (encode_texts if type(msg) is str else encode)(
        {
            "type": "message",
            "group": group,
            "sender": sender,
            "username": sender,
            "from_user": sender,
            "msg": msg,
        }
    )


def private_message(sender: str, to: str, msg: Any) -> bytes:
    return (encode_texts if type(msg) is str else encode)(
        {
            "type": "private",
            "sender": sender,
            "username": sender,
            "from_user": sender,
            "to": to,
            "msg": msg,
        }
    )


def presence(event: str, user: str, group: str | None = None) -> bytes:
    """
    ``encode({"type": "presence", "event": event, "user": user[, "group": group]})``,
    byte for byte, with only the strings encoded: up to four of these are made
    per connection (online, join, leave, offline), and a dict through the
    encoder costs several times more.
    """
    text = '{"type":"presence","event":' + _ENCODER.encode(event) + ',"user":' + _ENCODER.encode(user)
    if group is not None:
        text += ',"group":' + _ENCODER.encode(group)
    return (text + "}").encode("utf-8")


def ack(request_id: str) -> bytes:
    return encode_texts({"type": "ack", "id": request_id})


def who(group: str, users: list[str], request_id: str | None, max_size: int | None = None) -> bytes:
    """
    The answer to ``who``. Longer than ``max_size`` bytes, it lists the
    first users (in order) that fit, and says ``"truncated": true``.
    """
    body: dict[str, Any] = {"type": "who", "group": group, "users": users}
    if request_id is not None:
        body["id"] = request_id
    reply = encode(body)
    if max_size is None or len(reply) <= max_size:
        return reply
    body["users"] = []
    body["truncated"] = True
    room = max_size - len(encode(body))
    kept = 0
    for user in users:
        room -= len(_ENCODER.encode(user).encode("utf-8")) + 1  # and its comma
        if room < 0:
            break
        kept += 1
    body["users"] = users[:kept]
    return encode(body)


def welcome(user: str, session: str, groups: list[str]) -> bytes:
    return encode({"type": "welcome", "user": user, "session": session, "groups": groups})


def error(err: ProtocolError, native: bool) -> bytes:
    """
    An error frame. For seed pages it also carries the fields they print
    (``sender``/``from_user``/``username`` and ``msg``), so the reason
    shows up as a readable chat line from the reserved system name.
    """
    body: dict[str, Any] = {"type": "error", "code": err.code.value, "reason": err.reason}
    if err.id is not None:
        body["id"] = err.id
    if not native:
        body.update(
            sender=SYSTEM_NAME, from_user=SYSTEM_NAME, username=SYSTEM_NAME, msg=err.reason
        )
    return encode(body)
