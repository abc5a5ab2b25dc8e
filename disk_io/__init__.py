"""vigil's data plane: VixDiskLib (cffi), datastore HTTP and direct-file transports behind
one small interface, changed/allocated extent logic. The threads that read disks for a
backup are the caller's (protector/parallel.py); a transport's reads are blocking calls
that several threads may make at once."""

from .errors import (
    DiskIoError,
    DiskOpenError,
    InvalidChangedAreas,
    ThumbprintMismatch,
    TransportUnavailable,
    VddkError,
    VddkUnavailable,
)
from .extents import (
    ChangedAreaPager,
    align_to_chunks,
    chunk_slots,
    collect_changed_areas,
    intersect,
    iter_changed_areas,
    normalize,
    slot_ranges,
)
from .model import SECTOR, DiskLocation, Extent, VcenterAccess
from .transport import DiskTransport, OpenAttempt, OpenedDisk, TransportSettings, open_disk

__all__ = [
    "SECTOR",
    "ChangedAreaPager",
    "DiskIoError",
    "DiskLocation",
    "DiskOpenError",
    "DiskTransport",
    "Extent",
    "InvalidChangedAreas",
    "OpenAttempt",
    "OpenedDisk",
    "ThumbprintMismatch",
    "TransportSettings",
    "TransportUnavailable",
    "VcenterAccess",
    "VddkError",
    "VddkUnavailable",
    "align_to_chunks",
    "chunk_slots",
    "collect_changed_areas",
    "intersect",
    "iter_changed_areas",
    "normalize",
    "open_disk",
    "slot_ranges",
]
