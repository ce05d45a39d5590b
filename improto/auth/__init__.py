"""
Who is connecting: open mode (the URL's nickname, unverified; the default)
or token mode (the ``sub`` of a signed JWT). See docs/auth.md.
"""

from improto.auth.handshake import TokenMode
from improto.auth.identity import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHENTICATED,
    OPEN_MODE,
    Authenticator,
    AuthRefusal,
    Identity,
    OpenMode,
    parse_chat_path,
)
from improto.auth.keys import KeyFileError, Keys
from improto.auth.options import announce, authenticator_from_options
from improto.auth.verify import Claims, TokenRejected, TokenVerifier

__all__ = [
    "CLOSE_FORBIDDEN",
    "CLOSE_UNAUTHENTICATED",
    "OPEN_MODE",
    "Authenticator",
    "AuthRefusal",
    "Claims",
    "Identity",
    "KeyFileError",
    "Keys",
    "OpenMode",
    "TokenMode",
    "TokenRejected",
    "TokenVerifier",
    "announce",
    "authenticator_from_options",
    "parse_chat_path",
]
