"""Per restore point and disk: the array of chunk ids (Proxmox-style fixed index).

Plaintext layout: magic "VGIX" | chunk_size u32le | capacity u64le | count u32le | ids.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from repository.codec import ZERO_ID

INDEX_MAGIC = b"VGIX"
_HEAD = struct.Struct("<4sIQI")
HEADER_SIZE = _HEAD.size


def slot_count(capacity: int, chunk_size: int) -> int:
    return -(-capacity // chunk_size)


@dataclass(frozen=True, slots=True)
class WriteStats:
    slots: int = 0
    changed_slots: int = 0
    zero_slots: int = 0
    new_chunks: int = 0
    new_bytes: int = 0  # bytes stored (after compression/encryption)
    dedup_chunks: int = 0


@dataclass(frozen=True, slots=True)
class DiskIndex:
    chunk_size: int
    capacity: int
    ids: tuple[bytes, ...]
    index_id: bytes = b""  # set once stored
    stats: WriteStats = field(default_factory=WriteStats)

    def __post_init__(self) -> None:
        if len(self.ids) != slot_count(self.capacity, self.chunk_size):
            raise ValueError(
                f"index has {len(self.ids)} ids, capacity {self.capacity} needs "
                f"{slot_count(self.capacity, self.chunk_size)}"
            )

    def slot_length(self, slot: int) -> int:
        return min(self.chunk_size, self.capacity - slot * self.chunk_size)

    def referenced(self) -> set[bytes]:
        return {i for i in self.ids if i != ZERO_ID}

    def to_bytes(self) -> bytes:
        return _HEAD.pack(INDEX_MAGIC, self.chunk_size, self.capacity, len(self.ids)) + b"".join(
            self.ids
        )

    @classmethod
    def from_bytes(cls, data: bytes, name: str, index_id: bytes = b"") -> DiskIndex:
        if len(data) < _HEAD.size:
            raise ValueError(f"index {name} truncated")
        magic, chunk_size, capacity, count = _HEAD.unpack_from(data)
        if magic != INDEX_MAGIC or len(data) != _HEAD.size + 32 * count or chunk_size == 0:
            raise ValueError(f"index {name} is malformed")
        body = data[_HEAD.size :]
        ids = tuple(body[i : i + 32] for i in range(0, len(body), 32))
        return cls(chunk_size, capacity, ids, index_id)
