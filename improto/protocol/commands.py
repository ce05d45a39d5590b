"""
Client frames to commands: what a frame asks for, or why it is refused.

Two dialects share one connection URL. The *seed* dialect is what the
Flask + gevent-websocket pages send (``{"username", "msg"}`` for the group,
``{"to_user", "msg"}`` for private, or any text at all); the *native*
dialect is JSON objects with a ``type``. See ``docs/protocol.md``, section
"Which dialect a frame is read in", for the exact rule.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from improto.protocol import jsontext
from improto.protocol.errors import ErrorCode, ProtocolError
from improto.protocol.names import MAX_GROUP_LENGTH, check_name, normalize_name

#: Every connection starts as a member of this group, as in the seeds.
LOBBY = "lobby"
MAX_ID_LENGTH = 64


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

#: A frame that was meant as a native request even if it does not parse:
#: an object (``{`` first) with a ``type`` key, in double or single quotes.
_OBJECT_START = re.compile(r"\s*\{")
_TYPE_KEY = re.compile(r"""["']type["']\s*:""")


def looks_native(text: str) -> bool:
    """Whether ``text`` looks like a native request, parseable or not."""
    return _OBJECT_START.match(text) is not None and _TYPE_KEY.search(text) is not None


def is_native(obj: object) -> bool:
    return isinstance(obj, dict) and "type" in obj


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
    if isinstance(value, int) and abs(value) >= 10**MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"Field 'id' is longer than {MAX_ID_LENGTH} characters."
        )
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"Field 'id' is longer than {MAX_ID_LENGTH} characters."
        )
    if jsontext.has_surrogate(text):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "Field 'id' contains a lone surrogate; it must be Unicode text."
        )
    return text


def _group(obj: dict[str, Any], request_id: str | None) -> str:
    name = _field(obj, "group", request_id)
    try:
        return check_name(name, "group name", MAX_GROUP_LENGTH)
    except ProtocolError as e:
        raise attrs.evolve(e, id=request_id) from None


def _check_unicode(obj: Any, text: str, request_id: str | None) -> None:
    try:
        jsontext.check_unicode(obj, text)
    except jsontext.JsonRefused as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, e.reason, request_id) from None


def _native(obj: Any, text: str) -> Command:
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            "A native frame must be a JSON object with a string 'type'.",
        )
    request_id = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            "Field 'type' is missing or not a string; expected send, private, join, leave, who, "
            "history or resume.",
            request_id,
        )
    _check_unicode(obj, text, request_id)
    if kind == "send":
        if "msg" not in obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'msg' is missing.", request_id)
        return SendToGroup(_group(obj, request_id), obj["msg"], request_id, native=True)
    if kind == "private":
        if "msg" not in obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'msg' is missing.", request_id)
        to = normalize_name(_field(obj, "to", request_id))
        return SendToUser(to, obj["msg"], request_id, native=True)
    if kind == "join":
        return Join(_group(obj, request_id), request_id)
    if kind == "leave":
        return Leave(_group(obj, request_id), request_id)
    if kind == "who":
        return Who(_group(obj, request_id), request_id)
    if kind in ("history", "resume"):
        from improto.protocol import streams  # it imports this module

        if kind == "history":
            return streams.decode_history(obj, request_id)  # type: ignore[return-value]
        return streams.decode_resume(obj, request_id)  # type: ignore[return-value]
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"Unknown message type {kind[:40]!r}; expected send, private, join, leave, who, "
        "history or resume.",
        request_id,
    )


def decode(text: str, native: bool = False) -> Command:
    """
    Turn one text frame into a command, or raise :class:`ProtocolError`.

    ``native`` says the connection speaks the native dialect (it
    negotiated ``improto.v1`` or has sent a native request): then every
    frame must be a native request. On a seed connection a JSON object
    with a ``type`` is a native request too, and so is a frame that fails
    to parse but looks like one (:func:`looks_native`), so a native
    request with a typo is refused instead of shown to the lobby; any
    other frame that is not a seed command is plain text, sent to the
    lobby verbatim.
    """
    # Most frames cannot hold a surrogate (jsontext.suspect): they skip the scans.
    suspect = jsontext.suspect(text)
    if suspect and jsontext.has_surrogate(text):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "The frame contains a lone surrogate; it must be Unicode text."
        )
    try:
        obj = jsontext.parse(text)
    except jsontext.JsonRefused as e:
        if not (native or looks_native(text)):
            return SendToGroup(LOBBY, text)
        code = ErrorCode.BAD_JSON if e.syntax else ErrorCode.BAD_MESSAGE
        raise ProtocolError(code, e.reason) from None
    if native or is_native(obj):
        return _native(obj, text)
    if not isinstance(obj, dict):
        return SendToGroup(LOBBY, text)
    if "to_user" in obj:
        to_user = obj["to_user"]
        if not isinstance(to_user, str) or not to_user:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "Field 'to_user' must be a non-empty string.")
        if suspect:
            _check_unicode(obj, text, None)
        return SendToUser(normalize_name(to_user), obj.get("msg"))
    if "msg" in obj:
        if suspect:
            _check_unicode(obj, text, None)
        return SendToGroup(LOBBY, obj["msg"])
    # The 004 server forwarded any frame verbatim; so do we.
    return SendToGroup(LOBBY, text)


def request_id_of(text: str) -> str | None:
    """
    The ``id`` of a native frame refused before decoding (too large, rate
    limited), so the error names the request; None when there is none.
    """
    if jsontext.has_surrogate(text):
        return None
    try:
        obj = jsontext.parse(text)
        return _request_id(obj) if is_native(obj) else None
    except (jsontext.JsonRefused, ProtocolError):
        return None
