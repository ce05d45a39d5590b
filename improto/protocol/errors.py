"""Error codes and the refusal every layer raises for bad client input."""

from __future__ import annotations

import enum

import attrs


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
