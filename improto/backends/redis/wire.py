"""
How an :class:`~improto.backends.interface.Envelope` travels as a Redis message.

Layout (network byte order), version 1::

    u8 version | u8 flags | u8 audience | u16 len(origin_node)
    | u16 len(origin_session) | u16 len(exclude_session)
    | origin_node | origin_session | exclude_session | data...

Strings are UTF-8; ``data`` is the raw frame, whatever its bytes, and runs
to the end of the message, so nothing is escaped or base64-encoded.
Flags: bit 0 ``binary``, bit 1 ``exclude_session`` present (an empty
exclude and no exclude differ). A node that meets a version it does not
know drops the message: during a rolling upgrade, new nodes must keep
writing the old version until every node reads the new one.

Version 2 is an envelope with a history position (``stream``/``seq``,
written by the append script of :mod:`improto.backends.redis.streams`)::

    u8 2 | u8 flags | u8 audience | u16 len(origin_node) | u16 len(origin_session)
    | u16 len(exclude_session) | u16 len(stream) | origin_node | origin_session
    | exclude_session | stream | u8 len(seq) | seq (ASCII decimal) | data...

Everything up to ``stream`` is :func:`encode_head`; the script, which
alone knows the seq, appends ``len(seq) | seq | data``. Version 1 is still
written for envelopes without a position.
"""

from __future__ import annotations

import struct

from improto.backends.interface import Audience, Envelope

VERSION = 1
VERSION_POSITIONED = 2
_HEADER = struct.Struct("!BBBHHH")
_STREAM_LEN = struct.Struct("!H")
_HEADER_POSITIONED = struct.Struct("!BBBHHHH")
_BINARY = 0x01
_HAS_EXCLUDE = 0x02
_AUDIENCE_CODES = {Audience.ALL: 0, Audience.NATIVE: 1}
_AUDIENCES = {code: audience for audience, code in _AUDIENCE_CODES.items()}
_NATIVE_CODE = bytes([_AUDIENCE_CODES[Audience.NATIVE]])


class WireError(ValueError):
    """
    A message could not be decoded. ``cause`` is short and has no
    per-message detail, so it can key "log once per cause".
    """

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _parts(envelope: Envelope) -> tuple[int, bytes, bytes, bytes]:
    """The flags and the encoded strings every version's header carries."""
    node = envelope.origin_node.encode("utf-8")
    session = envelope.origin_session.encode("utf-8")
    exclude = b"" if envelope.exclude_session is None else envelope.exclude_session.encode("utf-8")
    flags = (_BINARY if envelope.binary else 0) | (
        _HAS_EXCLUDE if envelope.exclude_session is not None else 0
    )
    return flags, node, session, exclude


def encode_envelope(envelope: Envelope) -> bytes:
    flags, node, session, exclude = _parts(envelope)
    header = _HEADER.pack(
        VERSION,
        flags,
        _AUDIENCE_CODES[envelope.audience],
        len(node),
        len(session),
        len(exclude),
    )
    return b"".join((header, node, session, exclude, envelope.data))


def encode_head(envelope: Envelope, stream: str) -> bytes:
    """A version-2 envelope up to its seq: what the append script completes."""
    flags, node, session, exclude = _parts(envelope)
    encoded = stream.encode("utf-8")
    header = _HEADER_POSITIONED.pack(
        VERSION_POSITIONED, flags, _AUDIENCE_CODES[envelope.audience],
        len(node), len(session), len(exclude), len(encoded),
    )
    return b"".join((header, node, session, exclude, encoded))


def native_and_unpositioned(payload: bytes) -> bool:
    """
    Whether ``payload`` is a version-1 envelope (no history position) for
    native sessions only: presence announcements and live copies of private
    messages. Read off two header bytes, without decoding.
    """
    return payload[:1] == b"\x01" and payload[2:3] == _NATIVE_CODE


def decode_envelope(payload: bytes) -> Envelope:
    if len(payload) < _HEADER.size:
        raise WireError("shorter than the envelope header")
    version, flags, audience_code, node_len, session_len, exclude_len = _HEADER.unpack_from(payload)
    if version == VERSION:
        start = _HEADER.size
        stream_len = 0
    elif version == VERSION_POSITIONED:
        start = _HEADER.size + _STREAM_LEN.size
        if len(payload) < start:
            raise WireError("shorter than the envelope header")
        (stream_len,) = _STREAM_LEN.unpack_from(payload, _HEADER.size)
    else:
        raise WireError(f"unsupported envelope version {version}")
    audience = _AUDIENCES.get(audience_code)
    if audience is None:
        raise WireError(f"unknown audience code {audience_code}")
    strings_end = start + node_len + session_len + exclude_len
    data_start = strings_end + stream_len
    stream: str | None = None
    seq: int | None = None
    if version == VERSION_POSITIONED:
        # ... | stream | u8 len(seq) | seq | data
        if len(payload) < data_start + 1:
            raise WireError("truncated envelope header strings")
        seq_len = payload[data_start]
        raw_seq = payload[data_start + 1 : data_start + 1 + seq_len]
        if len(raw_seq) != seq_len or not raw_seq.isdigit():
            raise WireError("bad envelope seq")
        seq = int(raw_seq)
        data_start += 1 + seq_len
    elif len(payload) < data_start:
        raise WireError("truncated envelope header strings")
    try:
        node = payload[start : start + node_len].decode("utf-8")
        start += node_len
        session = payload[start : start + session_len].decode("utf-8")
        start += session_len
        exclude = payload[start:strings_end].decode("utf-8")
        if version == VERSION_POSITIONED:
            stream = payload[strings_end : strings_end + stream_len].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("envelope header strings are not UTF-8") from None
    # Positional: keywords cost attrs' __init__ more, once per message received.
    return Envelope(node, session, payload[data_start:], bool(flags & _BINARY), audience,
                    exclude if flags & _HAS_EXCLUDE else None, stream, seq)
