"""A restore point's disk as a read-only, seekable file object that reads chunks on demand.

Each read maps to chunk slots of the disk's index; each slot's bytes come from the shared
`ChunkCache` or, on a miss, from the repository's `slot_fetcher` (which decrypts,
decompresses and re-hashes the chunk). An all-zero slot is a hole and reads as zeros. A
missing or damaged chunk raises `DamagedDiskError` (an OSError with errno EIO) naming the
point, disk and byte range, so a filesystem reader above fails on exactly the file that
needs it and never sees silent zeros. Sequential readers get a short read-ahead on a small
thread pool, which keeps extraction close to `vigil export` throughput.
"""

from __future__ import annotations

import errno
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from repository.codec import ZERO_ID
from repository.errors import CorruptChunkError
from repository.index import DiskIndex

from .stream import SizedStream

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
READ_AHEAD_SLOTS = 4
_ZEROS = bytes(1 << 20)


class DamagedDiskError(OSError):
    """A read hit a chunk that is missing or damaged; no bytes of it are returned."""

    def __init__(self, point_id: str, disk_key: str, offset: int, reason: str) -> None:
        super().__init__(
            errno.EIO,
            f"restore point {point_id} disk {disk_key!r}: damaged data at byte {offset}: {reason}",
        )
        self.point_id = point_id
        self.disk_key = disk_key
        self.offset = offset


class ChunkCache:
    """A bounded LRU of decoded chunks keyed by chunk id, shared by every open disk. Chunks
    are content-addressed, so two points (or two disks) sharing a chunk share its entry.
    Loads run outside the lock; concurrent misses on one id wait for a single load."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, threads: int = 2) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._loading: dict[bytes, Future[bytes]] = {}
        self._size = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chunk-read")
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        return self._size

    def get(self, cid: bytes, load: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._entries.get(cid)
            if data is not None:
                self._entries.move_to_end(cid)
                self.hits += 1
                return data
            fut = self._loading.get(cid)
            if fut is None:
                self.misses += 1
                fut = Future()
                self._loading[cid] = fut
                mine = True
            else:
                mine = False
        if not mine:
            return fut.result()
        self._load(cid, load, fut)
        return fut.result()

    def prefetch(self, cid: bytes, load: Callable[[], bytes]) -> None:
        """Start loading `cid` in the background unless cached or already loading. A failed
        prefetch is forgotten: the reader that needs the chunk loads it and sees the error."""
        with self._lock:
            if cid in self._entries or cid in self._loading:
                return
            fut: Future[bytes] = Future()
            self._loading[cid] = fut
        self._pool.submit(self._load, cid, load, fut)

    def _load(self, cid: bytes, load: Callable[[], bytes], fut: Future[bytes]) -> None:
        try:
            data = load()
        except BaseException as exc:
            with self._lock:
                self._loading.pop(cid, None)
            fut.set_exception(exc)
            return
        with self._lock:
            self._loading.pop(cid, None)
            if len(data) <= self.max_bytes:
                self._entries[cid] = data
                self._size += len(data)
                while self._size > self.max_bytes:
                    _old, evicted = self._entries.popitem(last=False)
                    self._size -= len(evicted)
        fut.set_result(data)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._entries.clear()
            self._size = 0


class RepoDisk(SizedStream):
    """One disk of a restore point: `read`/`seek`/`tell` over its whole capacity."""

    def __init__(
        self,
        point_id: str,
        disk_key: str,
        index: DiskIndex,
        fetch: Callable[[int], bytes | None],
        cache: ChunkCache,
    ) -> None:
        super().__init__()
        self.point_id = point_id
        self.disk_key = disk_key
        self.index = index
        self.size = index.capacity
        self._fetch = fetch
        self._cache = cache
        self._pos = 0
        self._last_slot = -2

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        pos = self._seek_target(offset, whence)
        if pos < 0:
            raise OSError(errno.EINVAL, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self.pread_into(memoryview(buf).cast("B"), self._pos)
        self._pos += n
        return n

    def pread(self, length: int, offset: int) -> bytes:
        """Read without moving the position (thread-safe: for the FUSE view)."""
        out = bytearray(max(0, min(length, self.size - offset)))
        n = self.pread_into(memoryview(out), offset)
        return bytes(out[:n])

    def pread_into(self, out: memoryview, offset: int) -> int:
        end = min(offset + len(out), self.size)
        if offset >= end:
            return 0
        cs = self.index.chunk_size
        pos = offset
        while pos < end:
            slot, within = divmod(pos, cs)
            take = min(cs - within, end - pos)
            data = self._slot(slot)
            dst = out[pos - offset : pos - offset + take]
            if data is None:
                dst[:] = _ZEROS[:take] if take <= len(_ZEROS) else bytes(take)
            else:
                dst[:] = memoryview(data)[within : within + take]
            pos += take
        return end - offset

    def chunk_bytes(self, offset: int, length: int) -> bytes | None:
        """The `length` bytes at `offset`, which must lie within one chunk slot, without
        copying when they are the whole slot; None when the slot is a hole (all zeros)."""
        slot, within = divmod(offset, self.index.chunk_size)
        if within + length > self.index.slot_length(slot):
            raise ValueError(f"bytes {offset}+{length} cross a chunk boundary")
        data = self._slot(slot)
        if data is None or (within == 0 and length == len(data)):
            return data
        return data[within : within + length]

    def _slot(self, slot: int) -> bytes | None:
        cid = self.index.ids[slot]
        sequential = slot in (self._last_slot, self._last_slot + 1)
        self._last_slot = slot
        if sequential:
            for ahead in range(slot + 1, min(slot + 1 + READ_AHEAD_SLOTS, len(self.index.ids))):
                aid = self.index.ids[ahead]
                if aid != ZERO_ID:
                    self._cache.prefetch(aid, self._loader(ahead))
        if cid == ZERO_ID:
            return None
        return self._cache.get(cid, self._loader(slot))

    def _loader(self, slot: int) -> Callable[[], bytes]:
        def load() -> bytes:
            try:
                data = self._fetch(slot)
            except CorruptChunkError as exc:
                raise DamagedDiskError(
                    self.point_id, self.disk_key, slot * self.index.chunk_size, str(exc)
                ) from exc
            assert data is not None  # only ZERO_ID slots are holes, and those never load
            return data

        return load
