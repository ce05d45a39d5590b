"""
Redis Cluster's key space: hash slots, hash tags and who owns which slot.

A key (or a sharded channel) lives in slot ``CRC16(tag) mod 16384``,
where ``tag`` is the part between the first ``{`` and the next ``}`` if
that part is not empty, else the whole key. :class:`SlotMap` is the
answer of ``CLUSTER SLOTS``: the master address of every slot. Nothing
here does I/O.
"""

from __future__ import annotations

import attrs

SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


#: A master as ``(host, port)``.
Address = tuple[str, int]


def show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.define
class SlotMap:
    """The owner (master address) of each slot; ``None`` where no master serves it."""

    owners: list[Address | None] = attrs.field(factory=lambda: [None] * SLOTS)

    @classmethod
    def from_cluster_slots(cls, reply: list[list[object]], fallback_host: str) -> SlotMap:
        """
        Parse ``CLUSTER SLOTS``: ``[[start, end, [host, port, id, ...], replica...], ...]``.
        An empty host (a node that does not know its own address) means
        the host we asked.
        """
        owners: list[Address | None] = [None] * SLOTS
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]  # type: ignore[call-overload]
            raw_host = master[0]  # type: ignore[index]
            host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
            address = (host or fallback_host, int(master[1]))  # type: ignore[index]
            for slot in range(start, end + 1):
                owners[slot] = address
        return cls(owners)

    def owner(self, slot: int) -> Address | None:
        return self.owners[slot]

    def masters(self) -> set[Address]:
        return {a for a in self.owners if a is not None}

    def ranges(self, address: Address) -> str:
        """The slots ``address`` owns, as ``0-5460,10923``: for health and logs."""
        out: list[str] = []
        start: int | None = None
        for slot in range(SLOTS + 1):
            mine = slot < SLOTS and self.owners[slot] == address
            if mine and start is None:
                start = slot
            elif not mine and start is not None:
                out.append(str(start) if start == slot - 1 else f"{start}-{slot - 1}")
                start = None
        return ",".join(out) or "none"

    @property
    def covered(self) -> bool:
        return all(a is not None for a in self.owners)
