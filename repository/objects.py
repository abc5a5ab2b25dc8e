"""Object I/O: naming, encoding and storing chunks, indexes, manifests, tombstones and pins,
and healing a damaged content-addressed object by replacing it with a fresh copy."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import structlog

from repository import codec
from repository.backend import Backend
from repository.codec import ObjectType, chunk_key
from repository.errors import (
    CorruptObjectError,
    ManifestError,
    ObjectNotFoundError,
    RepositoryError,
)
from repository.index import HEADER_SIZE as INDEX_HEADER
from repository.index import DiskIndex, slot_count
from repository.keys import KeySet
from repository.manifest import seal, unseal

log = structlog.get_logger(__name__)
MAX_DISK = 62 << 40  # the largest virtual disk vSphere supports (62 TB VMDK)


def index_key(index_id: bytes | str) -> str:
    return f"indexes/{index_id if isinstance(index_id, str) else index_id.hex()}"


def manifest_key(point_id: str) -> str:
    return f"manifests/{point_id}"


def tombstone_key(point_id: str) -> str:
    return f"tombstones/{point_id}"


def pin_key(point_id: str) -> str:
    return f"pins/{point_id}"


class ReuseOdds:
    """How likely, lately, a chunk being stored is one the repository holds already: a
    moving average over the last few dozen put_chunk calls (all writers of this process
    share it). Thread-safe; a heuristic, so a lost race costs one request, never data."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self._existing = 0.0  # a first backup stores new chunks
        self._lock = threading.Lock()

    def likely_new(self) -> bool:
        with self._lock:
            return self._existing < 0.5

    def saw(self, existed: bool) -> None:
        with self._lock:
            self._existing += self.weight * (float(existed) - self._existing)


class ObjectStore:
    """Typed objects over a backend. Thread-safe (the backend and codec are)."""

    def __init__(self, backend: Backend, keys: KeySet, chunk_size: int) -> None:
        self.backend = backend
        self.keys = keys
        self.chunk_size = chunk_size
        # A backend whose put_if_absent is one request that fails cheaply on an existing
        # key, and whose touch() refreshes nothing (S3: PUT + If-None-Match, 412), needs no
        # check before a write: while chunks are mostly new, put_chunk writes first and
        # checks only what the write found there (one request per new chunk, not two).
        # While they are mostly there already (a second full backup of the same disks) it
        # checks first, so unchanged data is not uploaded again. None: as the backend says.
        self.put_first: bool | None = None
        self.reuse = ReuseOdds()

    def index_limit(self, capacity: int | None) -> int:
        """The most an index may inflate to: its disk's slots (the largest VMDK, 62 TiB,
        when the disk is not known)."""
        return INDEX_HEADER + 32 * slot_count(capacity or MAX_DISK, self.chunk_size)

    def load_chunk(self, chunk_id: bytes) -> bytes:
        key = chunk_key(chunk_id)
        blob = self.backend.get(key)
        return codec.decode(self.keys, key, blob, ObjectType.CHUNK, chunk_id, True, self.chunk_size)

    def put_chunk(
        self,
        chunk_id: bytes,
        data: bytes | bytearray | memoryview,
        verify_existing: bool,
        created: set[str] | None = None,
    ) -> int:
        """See Repository.put_chunk; `created` collects the keys of objects this call
        brought into being (not reused, not healed)."""
        key = chunk_key(chunk_id)
        put_first = self.put_first
        if put_first is None:
            put_first = bool(getattr(self.backend, "conditional_put", False))
        if put_first and self.reuse.likely_new():
            return self._put_chunk_first(key, chunk_id, data, verify_existing, created)
        if not verify_existing:
            if self.backend.touch(key):
                self.reuse.saw(True)
                return 0
            self.reuse.saw(False)
            blob = codec.encode(self.keys, ObjectType.CHUNK, chunk_id, data)
            return len(blob) if self._put_new(key, blob, created) else 0
        if self.intact(key, ObjectType.CHUNK, chunk_id):
            self.reuse.saw(True)
            self.backend.touch(key)
            return 0
        self.reuse.saw(False)
        blob = codec.encode(self.keys, ObjectType.CHUNK, chunk_id, data)
        if self._put_new(key, blob, created):
            return len(blob)
        if self.intact(key, ObjectType.CHUNK, chunk_id):
            return 0  # another writer stored it a moment ago
        self.heal(key, blob)
        return len(blob)

    def _put_chunk_first(
        self,
        key: str,
        chunk_id: bytes,
        data: bytes | bytearray | memoryview,
        verify_existing: bool,
        created: set[str] | None,
    ) -> int:
        """The write as the check: If-None-Match makes it write-once, so a key that exists
        is refused untouched (412) and only then looked at."""
        blob = codec.encode(self.keys, ObjectType.CHUNK, chunk_id, data)
        if self._put_new(key, blob, created):
            self.reuse.saw(False)
            return len(blob)
        self.reuse.saw(True)
        if not verify_existing or self.intact(key, ObjectType.CHUNK, chunk_id):
            return 0
        self.heal(key, blob)
        return len(blob)

    def _put_new(self, key: str, blob: bytes, created: set[str] | None) -> bool:
        new = self.backend.put_if_absent(key, blob)
        if new and created is not None:
            created.add(key)
        return new

    def store_index(self, index: DiskIndex, created: set[str] | None = None) -> DiskIndex:
        plain = index.to_bytes()
        iid = codec.object_id(self.keys, plain)
        blob = codec.encode(self.keys, ObjectType.INDEX, iid, plain)
        key = index_key(iid)
        if not self._put_new(key, blob, created):
            if self.intact(key, ObjectType.INDEX, iid):
                # Reused (e.g. an old orphan with the same content): like a reused chunk,
                # it must count as new for a sweep's grace period until our commit.
                self.backend.touch(key)
            else:
                self.heal(key, blob)
        return replace(index, index_id=iid)

    def load_index(self, index_id: str, capacity: int | None = None) -> DiskIndex:
        """`capacity`: the disk's, from its manifest; bounds what the index may inflate to."""
        key, iid = index_key(index_id), bytes.fromhex(index_id)
        limit = self.index_limit(capacity)
        plain = codec.decode(
            self.keys, key, self.backend.get(key), ObjectType.INDEX, iid, True, limit
        )
        try:
            return DiskIndex.from_bytes(plain, key, iid)
        except ValueError as exc:
            raise CorruptObjectError(key, str(exc)) from None

    def intact(self, key: str, otype: ObjectType, oid: bytes) -> bool:
        """Whether the stored object is as written for its id (codec.check_stored)."""
        limit = self.chunk_size if otype == ObjectType.CHUNK else self.index_limit(None)
        try:
            codec.check_stored(self.keys, key, self.backend.get(key), otype, oid, limit)
        except (CorruptObjectError, ObjectNotFoundError):
            return False
        return True

    def heal(self, key: str, blob: bytes) -> None:
        # Same id = same plaintext: replacing the damaged object loses nothing.
        self.backend.replace(key, blob)
        log.warning("repository.object_healed", object=key)

    def put_sealed(
        self,
        key: str,
        name: str,
        kind: str,
        otype: ObjectType,
        body: dict[str, Any],
        exist_ok: bool = False,
    ) -> None:
        """A manifest or tombstone: HMAC-sealed, encoded, stored write-once."""
        plain = seal(self.keys.mac_key, kind, body)
        blob = codec.encode(self.keys, otype, codec.name_id(self.keys, name), plain)
        if not self.backend.put_if_absent(key, blob) and not exist_ok:
            raise RepositoryError(f"{key} already exists")

    def get_sealed(self, key: str, name: str, kind: str, otype: ObjectType) -> dict[str, Any]:
        blob = self.backend.get(key)
        try:
            plain = codec.decode(
                self.keys, key, blob, otype, codec.name_id(self.keys, name), verify_id=False
            )
        except CorruptObjectError as exc:
            raise ManifestError(str(exc)) from None
        body = unseal(self.keys.mac_key, kind, plain, key)
        if body.get("point_id") != name:
            raise ManifestError(f"{key}: holds point {body.get('point_id')!r}, not {name!r}")
        return body
