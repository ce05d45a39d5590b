"""Just enough RFC 6455 to play a client against a StringTransport."""

from __future__ import annotations

import os
import struct
import zlib

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: localhost\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "{extra}\r\n"
)


def handshake(path: str, extra_headers: str = "") -> bytes:
    return HANDSHAKE.format(path=path, extra=extra_headers).encode("utf-8")


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 0x10000:
        header = bytes((first, 0x80 | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, 0x80 | 127)) + struct.pack("!Q", length)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def split_response(data: bytes) -> tuple[bytes, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def parse_frames(data: bytes, inflate: bool = False) -> list[tuple[int, bytes, bool]]:
    """(opcode, payload, was_compressed) for every complete server frame."""
    frames = []
    while len(data) >= 2:
        first, second = data[0], data[1]
        length = second & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        payload = data[offset:offset + length]
        data = data[offset + length:]
        compressed = bool(first & 0x40)
        if compressed and inflate:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        frames.append((first & 0x0F, payload, compressed))
    return frames


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0]
