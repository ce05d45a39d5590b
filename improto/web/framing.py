"""
The one frame we build ourselves, the permessage-deflate terms we accept,
and the unmasking of small client frames.

A group broadcast is framed (and compressed) once per compression setting
and the same bytes are written to every member. Uncompressed, that is
Autobahn's public ``prepareMessage`` / ``sendPreparedMessage``. Compressed,
Autobahn cannot do it: ``sendPreparedMessage`` on a connection with
permessage-deflate calls ``sendMessage``, which compresses the payload
again for every connection, with that connection's compressor. So the
shared compressed frame is ours: :func:`deflate` compresses the message on
its own and :func:`compressed_frame` frames it with RSV1 set. For those
bytes to be valid on every connection, every compressed frame we send must
be compressed without context, so chat routes insist on
``server_no_context_takeover`` (RFC 7692 section 7.1.1.1).

Context-free, every frame we send, shared or not, goes through one
long-lived compressor per (window bits, mem level) that ends each message
with ``Z_FULL_FLUSH``: that flush also forgets the context (zlib clears
its match history), so each message still inflates on its own. Autobahn's
``PerMessageDeflate`` would instead create a fresh ``compressobj`` for
every message to every connection (about 260 KiB of zlib state at window
bits 15 / mem level 8) and keep the last one alive for the connection's
life; with connections churning, that much allocation turnover left glibc's
heap fragmented and RSS rising for minutes (``benchmarks/deflate_rss.py``).

Every client frame is masked (RFC 6455 section 5.3), and Autobahn unmasks
each with a masker from ``create_xor_masker(mask, length)``. With its native
(NVX, cffi) extension built, that masker costs ~10 µs to set up and apply
whatever the frame's size (an import statement, three cffi allocations and
two copies per frame), several times what a chat frame's payload needs:
:func:`create_xor_masker` gives frames up to :data:`SMALL_FRAME` bytes an
:class:`IntXorMasker` (integer XOR, ~0.5 µs for 50 bytes) and larger ones
Autobahn's own. :mod:`improto.web.quiet` binds it in Autobahn's protocol
module. (``AUTOBAHN_USE_NVX=0`` is no alternative: read once when
``autobahn.websocket`` is first imported, it also swaps the UTF-8
validator for a pure-Python one that loops over every byte.)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import autobahn.websocket.xormasker
from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)

#: Largest frame payload unmasked by :class:`IntXorMasker`; Autobahn's native
#: masker is faster from a few KiB on.
SMALL_FRAME = 1024


class IntXorMasker:
    """
    Autobahn's masker interface (``pointer``, ``reset``, ``process``) by
    integer XOR: the same bytes as Autobahn's maskers, however the payload
    is split across ``process`` calls.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        offset = self._ptr & 3
        self._ptr += len(data)
        return unmask(data, self._mask, offset)


def unmask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """``data`` XORed with the 4-byte ``mask`` repeated, starting ``offset`` bytes into it."""
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n + offset) // 4 + 1))[offset : offset + n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """Autobahn's ``create_xor_masker``, but an :class:`IntXorMasker` for small frames."""
    if length is not None and length <= SMALL_FRAME and len(mask) == 4:
        return IntXorMasker(mask)
    return autobahn.websocket.xormasker.create_xor_masker(mask, length)


def compressed_frame(payload: bytes, binary: bool) -> bytes:
    """One unmasked, unfragmented server frame of a deflated message, RSV1 set
    (RFC 6455 section 5.2, RFC 7692 section 6)."""
    first = 0x80 | 0x40 | (0x2 if binary else 0x1)
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 0x10000:
        header = bytes((first, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + length.to_bytes(8, "big")
    return header + payload


#: The one compressor per (window bits, mem level); see the module docstring.
_compressors: dict[tuple[int, int], Any] = {}


def deflate(payload: bytes, window_bits: int, mem_level: int) -> bytes:
    """
    Compress a whole message without context, as RFC 7692 section 7.2.1.
    ``Z_FULL_FLUSH`` ends the message with the same empty stored block as
    ``Z_SYNC_FLUSH`` (stripped, section 7.2.1) and resets the history, so
    the shared compressor starts the next message with no context.
    """
    key = (window_bits, mem_level)
    compressor = _compressors.get(key)
    if compressor is None:
        compressor = _compressors[key] = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits, mem_level
        )
    return (compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH))[:-4]


class ContextFreeDeflate(PerMessageDeflate):  # type: ignore[misc]
    """
    Autobahn's permessage-deflate for a connection that promised
    ``server_no_context_takeover``, with every outgoing message compressed
    by :func:`deflate` (no zlib state of its own for sending). A message is
    collected and compressed at its end, so messages being sent on several
    connections at once (Autobahn's streaming API) never mix in the shared
    compressor. Receiving is Autobahn's, unchanged.
    """

    _outgoing: list[bytes]

    @classmethod
    def replacing(cls, pmce: PerMessageDeflate) -> ContextFreeDeflate:
        """The same negotiated terms (and inflate state) as ``pmce``."""
        new: ContextFreeDeflate = cls.__new__(cls)
        new.__dict__.update(pmce.__dict__)
        new._compressor = None
        new._outgoing = []
        return new

    def start_compress_message(self) -> None:
        self._outgoing = []

    def compress_message_data(self, data: bytes) -> bytes:
        self._outgoing.append(data)
        return b""

    def end_compress_message(self) -> bytes:
        data, self._outgoing = b"".join(self._outgoing), []
        return deflate(data, self.server_max_window_bits, self.mem_level)


class _ContextFreeAccept(PerMessageDeflateOfferAccept):
    """Says ``server_no_context_takeover`` even when the client did not ask
    (RFC 7692 section 7.1.1.1 allows it), so the promise is on the wire."""

    def get_extension_string(self) -> str:
        text: str = super().get_extension_string()
        if "server_no_context_takeover" not in text:
            text += "; server_no_context_takeover"
        return text


#: The window a compressing client is asked to keep to (RFC 7692 section
#: 7.1.2.2) when its offer lets us ask: our inflate state per connection is
#: then a 2 KiB window instead of 32 KiB, which with connections churning
#: kept RSS level (``benchmarks/deflate_rss.py``); chat-size JSON costs
#: about 23 % more bytes upstream than with 15 (0.225 vs 0.183 of the raw
#: size on 2,000 typical messages). 0: as the client likes.
CLIENT_WINDOW_BITS = 11


def _client_window_bits(extensions: str | None) -> int:
    """
    What to ask of the client: CLIENT_WINDOW_BITS, or less when its first
    permessage-deflate offer already names a smaller
    ``client_max_window_bits`` (a response must not name a larger one,
    section 7.1.2.2; Autobahn's parsed offer drops the value).
    """
    for offer in (extensions or "").split(","):
        params = [p.strip() for p in offer.split(";")]
        if params[0].lower() != "permessage-deflate":
            continue
        for param in params[1:]:
            name, _, value = param.partition("=")
            value = value.strip().strip('"')
            if name.strip().lower() == "client_max_window_bits" and value.isdigit():
                # Autobahn has refused values it cannot use (8) already.
                return min(CLIENT_WINDOW_BITS, int(value))
        break
    return CLIENT_WINDOW_BITS


def accept_shareable(
    max_message_size: int, extensions: str | None = None
) -> Callable[[list[Any]], Any]:
    """
    Accept permessage-deflate, insisting on server_no_context_takeover:
    each frame we send is then compressed on its own, so one compressed
    broadcast frame is valid on every connection with the same settings.
    ``extensions`` is the request's Sec-WebSocket-Extensions header, for
    the window the client may be asked to keep to.
    """
    client_bits = _client_window_bits(extensions)

    def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return _ContextFreeAccept(
                    offer,
                    no_context_takeover=True,
                    request_max_window_bits=client_bits if offer.accept_max_window_bits else 0,
                    max_message_size=max_message_size,
                )
        return None

    return accept


def accept_as_offered(max_message_size: int) -> Callable[[list[Any]], Any]:
    def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer, max_message_size=max_message_size)
        return None

    return accept
