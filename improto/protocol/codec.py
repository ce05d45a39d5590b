"""
The wire protocol, sans IO: text frames in, typed commands or errors out;
typed events in, encoded frames out.

Two dialects share one connection URL. The *seed* dialect is what the
Flask + gevent-websocket pages send (``{"username", "msg"}`` for the group,
``{"to_user", "msg"}`` for private, or any text at all); the *native*
dialect is JSON objects with a ``type``. See ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import json
import unicodedata
from typing import Any

import attrs

#: Every connection starts as a member of this group, as in the seeds.
LOBBY = "lobby"
#: The sender name on error frames for seed pages; no user may take it.
SYSTEM_NAME = "improto"
#: Negotiating this WebSocket subprotocol selects the native dialect.
NATIVE_SUBPROTOCOL = "improto.v1"

MAX_NAME_LENGTH = 32
MAX_GROUP_LENGTH = 64
MAX_ID_LENGTH = 64


class ErrorCode(str, enum.Enum):
    """Stable error codes; clients may switch on them."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_USER = "unknown_user"
    NOT_A_MEMBER = "not_a_member"
    NOT_ALLOWED = "not_allowed"
    BAD_NAME = "bad_name"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    SHUTTING_DOWN = "shutting_down"
    BAD_RESUME = "bad_resume"


@attrs.frozen
class ProtocolError(Exception):
    """A request the router refuses; becomes one error frame."""

    code: ErrorCode
    reason: str
    id: str | None = None


@attrs.frozen
class SendToGroup:
    group: str
    msg: Any
    id: str | None = None
    #: Whether it came in the native dialect (so the sender wants acks).
    native: bool = False


@attrs.frozen
class SendToUser:
    to: str
    msg: Any
    id: str | None = None
    native: bool = False


@attrs.frozen
class Join:
    group: str
    id: str | None = None
    native = True


@attrs.frozen
class Leave:
    group: str
    id: str | None = None
    native = True


@attrs.frozen
class Who:
    group: str
    id: str | None = None
    native = True


Command = SendToGroup | SendToUser | Join | Leave | Who


def check_name(name: str, what: str = "nickname", limit: int = MAX_NAME_LENGTH) -> str:
    """
    Return ``name`` if it may be a nickname or group name, else raise.

    Names are shown to other people, so invisible or layout-changing
    characters are refused rather than silently stripped.
    """
    if not name:
        raise ProtocolError(ErrorCode.BAD_NAME, f"The {what} is empty.")
    if len(name) > limit:
        raise ProtocolError(
            ErrorCode.BAD_NAME, f"The {what} is longer than {limit} characters."
        )
    if name != name.strip():
        raise ProtocolError(
            ErrorCode.BAD_NAME, f"The {what} starts or ends with white space."
        )
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise ProtocolError(
                ErrorCode.BAD_NAME,
                f"The {what} contains the control character U+{ord(char):04X}.",
            )
    if "/" in name:
        raise ProtocolError(ErrorCode.BAD_NAME, f"The {what} contains '/'.")
    if what == "nickname" and name.casefold() == SYSTEM_NAME:
        raise ProtocolError(ErrorCode.BAD_NAME, f"The nickname '{name}' is reserved.")
    return name


def _field(obj: dict[str, Any], key: str, request_id: str | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"Field '{key}' is missing or not a string.",
            request_id,
        )
    return value


def _request_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'id' must be a string or integer.")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"Field 'id' is longer than {MAX_ID_LENGTH} characters."
        )
    return text


def _group(obj: dict[str, Any], request_id: str | None) -> str:
    name = _field(obj, "group", request_id)
    try:
        return check_name(name, "group name", MAX_GROUP_LENGTH)
    except ProtocolError as e:
        raise attrs.evolve(e, id=request_id) from None


def _native(obj: dict[str, Any]) -> Any:
    kind = obj["type"]
    request_id = _request_id(obj)
    if kind == "send":
        if "msg" not in obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'msg' is missing.", request_id)
        return SendToGroup(_group(obj, request_id), obj["msg"], request_id, native=True)
    if kind == "private":
        if "msg" not in obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'msg' is missing.", request_id)
        return SendToUser(_field(obj, "to", request_id), obj["msg"], request_id, native=True)
    if kind == "join":
        return Join(_group(obj, request_id), request_id)
    if kind == "leave":
        return Leave(_group(obj, request_id), request_id)
    if kind == "who":
        return Who(_group(obj, request_id), request_id)
    if kind in ("history", "resume"):
        from improto.protocol import streams  # it imports this module

        if kind == "history":
            return streams.decode_history(obj, request_id)
        return streams.decode_resume(obj, request_id)
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"Unknown message type {kind!r}; expected send, private, join, leave, who, history or resume.",
        request_id,
    )


def is_native(obj: object) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("type"), str)


def decode(text: str) -> Command:
    """
    Turn one text frame into a command, or raise :class:`ProtocolError`.

    Anything that is not a native command is a seed-dialect message, so
    the only bad input a seed client can send is a bad private message.
    """
    try:
        obj = json.loads(text)
    except ValueError:
        return SendToGroup(LOBBY, text)
    if not isinstance(obj, dict):
        return SendToGroup(LOBBY, text)
    if is_native(obj):
        return _native(obj)
    if "to_user" in obj:
        to_user = obj["to_user"]
        if not isinstance(to_user, str) or not to_user:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'to_user' must be a non-empty string.")
        return SendToUser(to_user, obj.get("msg"))
    if "msg" in obj:
        return SendToGroup(LOBBY, obj["msg"])
    # The 004 server forwarded any frame verbatim; so do we.
    return SendToGroup(LOBBY, text)


#: One encoder for every frame: json.dumps builds a new one per call when
#: options differ from the defaults.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII kept as is (Chinese stays readable)."""
    return _ENCODER.encode(obj).encode("utf-8")


def group_message(group: str, sender: str, msg: Any) -> bytes:
    # The seed pages print ``sender`` (004), ``username`` (003 group page)
    # or ``from_user`` (003 private page); every message carries all three,
    # so each page prints every message readably.
    return encode(
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
    return encode(
        {
            "type": "private",
            "sender": sender,
            "username": sender,
            "from_user": sender,
            "to": to,
            "msg": msg,
        }
    )


def request_id_of(text: str) -> str | None:
    """The ``id`` of a native frame we refuse unparsed, so the error names it."""
    try:
        obj = json.loads(text)
        return _request_id(obj) if is_native(obj) else None
    except (ValueError, ProtocolError):
        return None


def presence(event: str, user: str, group: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "presence", "event": event, "user": user}
    if group is not None:
        body["group"] = group
    return encode(body)


def ack(request_id: str) -> bytes:
    return encode({"type": "ack", "id": request_id})


def who(group: str, users: list[str], request_id: str | None) -> bytes:
    body: dict[str, Any] = {"type": "who", "group": group, "users": users}
    if request_id is not None:
        body["id"] = request_id
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
