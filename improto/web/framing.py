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
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

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
        n = len(data)
        offset = self._ptr & 3
        self._ptr += n
        if not n:
            return b""
        key = (self._mask * ((n + offset) // 4 + 1))[offset : offset + n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )


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


def deflate(payload: bytes, window_bits: int, mem_level: int) -> bytes:
    """Compress a whole message without context, as RFC 7692 section 7.2.1."""
    compressor = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits, mem_level
    )
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


class _ContextFreeAccept(PerMessageDeflateOfferAccept):
    """Says ``server_no_context_takeover`` even when the client did not ask
    (RFC 7692 section 7.1.1.1 allows it), so the promise is on the wire."""

    def get_extension_string(self) -> str:
        text: str = super().get_extension_string()
        if "server_no_context_takeover" not in text:
            text += "; server_no_context_takeover"
        return text


def accept_shareable(max_message_size: int) -> Callable[[list[Any]], Any]:
    """
    Accept permessage-deflate, insisting on server_no_context_takeover:
    each frame we send is then compressed on its own, so one compressed
    broadcast frame is valid on every connection with the same settings.
    """

    def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return _ContextFreeAccept(
                    offer, no_context_takeover=True, max_message_size=max_message_size
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
