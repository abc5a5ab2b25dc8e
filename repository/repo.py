"""The repository façade: one object that opens a repository and offers every operation
protector uses. The work lives in small modules:

    config.py   the config object, the chunk-size rule, the checks made on open
    opening.py  creating and opening (config, key slots)
    objects.py  object I/O and healing      points.py  manifests, tombstones, seq, pins, delete
    writer.py   PointWriter / DiskWriter    reader.py  reading disks back, export

Layout under the backend (see docs/repository-format.md):
    config, keys/<slot>, chunks/<ab>/<id>, indexes/<id>, manifests/<point>, tombstones/<point>,
    heads/<point>, pins/<point>, locks/<id>
Local to this machine, in the state directory (state.py): locks, heads, job journal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from repository import opening, reader
from repository.backend import Backend
from repository.config import DEFAULT_CHUNK_SIZE, RepoConfig
from repository.errors import (
    ConfigTamperedError,
    PassphraseRequiredError,
    RepositoryError,
    RepositoryExistsError,
    WrongPassphraseError,
)
from repository.index import DiskIndex
from repository.keys import KdfParams, KeySet
from repository.manifest import Manifest, Tombstone, VmIdentity
from repository.objects import ObjectStore, index_key, manifest_key, tombstone_key
from repository.points import DamagedObject, PointStore, seq_of, vm_key_of, warn_damaged
from repository.repolock import RepoLock
from repository.state import LocalState, default_state_dir
from repository.writer import DiskWriter, PointWriter

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DamagedObject",
    "DiskWriter",
    "PointWriter",
    "RepoConfig",
    "Repository",
    "index_key",
    "manifest_key",
    "seq_of",
    "tombstone_key",
    "vm_key_of",
    "warn_damaged",
]

log = structlog.get_logger(__name__)


class Repository:
    """A vigil repository. Thread-safe: every method may be called from any thread."""

    def __init__(
        self,
        root: Path,
        backend: Backend,
        config: RepoConfig,
        keys: KeySet,
        slot: str | None = None,
        master: bytes | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        self.config = config
        self.keys = keys
        self._slot = slot
        self._master = master
        self.opened_by_host_key = False  # set by _of: which kind of secret opened it
        self.objects = ObjectStore(self.backend, self.keys, config.chunk_size)
        # What is local to this machine (locks, heads) lives outside the repository.
        self.state = LocalState(state_dir or default_state_dir(), config.repo_id)
        self.lock_timing: dict[str, float] = {}  # stale_after / refresh_every (tests)
        self.points = PointStore(self.objects, self.root, self.state)

    def __repr__(self) -> str:
        where = getattr(getattr(self.backend, "opts", None), "url", None) or str(self.root)
        return f"Repository({where!r}, encrypted={self.encrypted})"

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path | str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        passphrase: str | None = None,
        kdf: KdfParams | None = None,
        state_dir: Path | None = None,
        backend: Backend | None = None,
    ) -> Repository:
        """Create a repository. If `path` already holds one — typically because another
        process created it a moment ago — open that one with the same passphrase instead
        (RepositoryExistsError when the passphrase or encryption do not fit it).
        `backend`: the objects elsewhere (S3, see repository.s3); `path` then only names
        the repository in messages."""
        root = Path(path)
        there = backend.exists("config") if backend else (root / "config").exists()
        if not there:
            made = opening.create(root, chunk_size, passphrase, kdf, backend)
            if made is not None:
                return cls._of(made, state_dir)
        try:
            repo = cls.open(root, passphrase, state_dir, backend)
        except (WrongPassphraseError, PassphraseRequiredError, ConfigTamperedError) as exc:
            raise RepositoryExistsError(
                f"{root} already holds a vigil repository (perhaps created a moment ago by "
                f"another process) that cannot be opened as asked: {exc}"
            ) from exc
        if repo.chunk_size != chunk_size:
            log.warning(
                "repository.init_chunk_size_ignored",
                path=str(root),
                asked=chunk_size,
                existing=repo.chunk_size,
            )
        log.info("repository.init_opened_existing", path=str(root))
        return repo

    @classmethod
    def open(
        cls,
        path: Path | str,
        passphrase: str | None = None,
        state_dir: Path | None = None,
        backend: Backend | None = None,
        host_key: bytes | None = None,
    ) -> Repository:
        """`state_dir`: where this machine's state goes (default: $VIGIL_STATE_DIR, else
        /var/lib/vigil/state); one subdirectory per repository id. `backend`: the objects
        elsewhere (S3); `path` then only names the repository in messages. `host_key`:
        open through a host-key slot instead of the passphrase (HostKeyUnmatchedError when
        none is this key's)."""
        opened = opening.open_existing(Path(path), passphrase, backend, host_key)
        return cls._of(opened, state_dir)

    @classmethod
    def _of(cls, o: opening.Opened, state_dir: Path | None) -> Repository:
        repo = cls(o.root, o.backend, o.config, o.keys, o.slot, o.master, state_dir)
        repo.opened_by_host_key = o.by_host_key
        return repo

    @property
    def encrypted(self) -> bool:
        return self.keys.enc_key is not None

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def key_slot(self) -> str | None:
        """The key slot (name under keys/) that opened it: the passphrase's, or the host
        key's when `opened_by_host_key`; None if unencrypted."""
        return self._slot

    def add_key(self, passphrase: str, kdf: KdfParams | None = None) -> str:
        """A new key slot for another passphrase; returns its name."""
        if self._master is None:
            raise RepositoryError(f"repository {self.root} is not encrypted: it has no keys")
        slot = opening.add_slot(self.backend, self.config, self._master, passphrase, kdf)
        log.info("repository.key_added", path=str(self.root), slot=slot)
        return slot

    def add_host_key(self, host_key: bytes, host: str) -> str:
        """A new key slot that `host_key` opens (no passphrase needed on that host)."""
        if self._master is None:
            raise RepositoryError(f"repository {self.root} is not encrypted: it has no keys")
        slot = opening.add_host_slot(self.backend, self.config, self._master, host_key, host)
        log.info("repository.host_key_added", path=str(self.root), slot=slot, host=host)
        return slot

    def change_passphrase(self, new_passphrase: str, kdf: KdfParams | None = None) -> None:
        """Add a slot for the new passphrase, then drop the slot the current one opened."""
        if self.opened_by_host_key:
            # The slot that opened is the host key's: deleting it would lock this host out
            # and leave the old passphrase working.
            raise RepositoryError(
                f"repository {self.root} was opened with the host key (repository.key_file); "
                "to change the passphrase, open with it (`vigil key passwd` does)"
            )
        slot = self.add_key(new_passphrase, kdf)
        self.backend.delete(f"keys/{self._slot}")
        self._slot = slot
        log.info("repository.passphrase_changed", path=str(self.root))

    # -- objects ----------------------------------------------------------------------------

    def load_chunk(self, chunk_id: bytes) -> bytes:
        return self.objects.load_chunk(chunk_id)

    def put_chunk(
        self,
        chunk_id: bytes,
        data: bytes | bytearray | memoryview,
        verify_existing: bool = False,
        created: set[str] | None = None,
    ) -> int:
        """Store one chunk (`chunk_id` = codec.object_id of `data`); returns the bytes
        written, 0 when the object was already there. A reused object is touched so that
        a sweep's grace period protects it until our commit. With `verify_existing` a
        stored object is decoded first and, if damaged, atomically replaced (healed)."""
        return self.objects.put_chunk(chunk_id, data, verify_existing, created)

    def store_index(self, index: DiskIndex, created: set[str] | None = None) -> DiskIndex:
        return self.objects.store_index(index, created)

    def load_index(self, index_id: str, capacity: int | None = None) -> DiskIndex:
        return self.objects.load_index(index_id, capacity)

    # -- restore points ---------------------------------------------------------------------

    def list_points(self, vm_key: str | None = None) -> list[str]:
        return self.points.list_points(vm_key)

    def load_manifest(self, point_id: str) -> Manifest:
        return self.points.load_manifest(point_id)

    def scan_manifests(
        self, vm_key: str | None = None
    ) -> tuple[list[Manifest], list[DamagedObject]]:
        return self.points.scan_manifests(vm_key)

    def manifests(self, vm_key: str | None = None) -> list[Manifest]:
        """Readable manifests; each unreadable one is skipped with a warning naming it
        (verify reports it as damage) so one bad object does not stop backups or prune."""
        good, bad = self.points.scan_manifests(vm_key)
        warn_damaged(bad)
        return good

    def scan_tombstones(
        self, vm_key: str | None = None
    ) -> tuple[list[Tombstone], list[DamagedObject]]:
        return self.points.scan_tombstones(vm_key)

    def tombstones(self, vm_key: str | None = None) -> list[Tombstone]:
        good, bad = self.points.scan_tombstones(vm_key)
        warn_damaged(bad)
        return good

    def latest_point(self, vm_key: str) -> Manifest | None:
        """The VM's newest readable point (an unreadable newer one is skipped)."""
        points = self.manifests(vm_key)
        return max(points, key=lambda m: m.seq) if points else None

    def high_water(self, vm_key: str) -> tuple[int, str | None]:
        return self.points.high_water(vm_key)

    def high_waters(self) -> dict[str, tuple[int, str]]:
        return self.points.high_waters()

    def vm_lock_path(self, vm_key: str) -> Path:
        return self.points.vm_lock_path(vm_key)

    def delete_point(self, manifest: Manifest, reason: str) -> None:
        """Refused with PointPinnedError for a pinned point."""
        self.points.delete_point(manifest, reason)

    def pin(self, point_id: str, note: str = "") -> bool:
        return self.points.pin(point_id, note)

    def unpin(self, point_id: str) -> bool:
        return self.points.unpin(point_id)

    def pinned_points(self) -> set[str]:
        return self.points.pinned_points()

    def pin_note(self, point_id: str) -> str | None:
        return self.points.pin_note(point_id)

    # -- writing ----------------------------------------------------------------------------

    def begin_point(self, vm: VmIdentity, lock_timeout: float | None = None) -> PointWriter:
        """Start writing a restore point; use as a context manager (leaving it without
        commit() abandons the point, its new chunks become orphans that prune removes)."""
        return PointWriter(self, vm, lock_timeout)

    def lock(
        self, exclusive: bool = False, timeout: float | None = None, purpose: str = ""
    ) -> RepoLock:
        """Take a repository lock object (shared: writers and readers; exclusive: prune's
        sweep), refreshed until released; RepositoryBusyError after `timeout` seconds."""
        host = self.state.host_id()
        return RepoLock(self.backend, host, exclusive, purpose, **self.lock_timing).acquire(timeout)

    # -- reading ----------------------------------------------------------------------------

    def disk_index(self, point_id: str, disk_key: str) -> tuple[Manifest, DiskIndex]:
        return reader.disk_index(self, point_id, disk_key)

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Hold the repository lock shared while reading points: a prune sweep then waits
        (or defers) instead of removing chunks of a point deleted under a running restore."""
        return reader.reading(self)

    def read_disk(
        self, point_id: str, disk_key: str, threads: int = 2
    ) -> Iterator[tuple[int, bytes | None]]:
        """(offset, data) in disk order; data None for an all-zero slot (a hole). Every
        chunk is re-hashed; a bad one raises CorruptChunkError and nothing of it is returned.
        The repository lock is held shared until the stream ends or is closed."""
        return reader.read_disk(self, point_id, disk_key, threads)

    def slot_fetcher(
        self, point_id: str, disk_key: str, index: DiskIndex
    ) -> Callable[[int], bytes | None]:
        """A function slot -> that slot's bytes of the disk (`index` from disk_index), None
        for an all-zero slot (a hole). Each chunk is read, decrypted, decompressed and
        re-hashed against its id; a missing, damaged or wrongly sized one raises
        CorruptChunkError naming the chunk, point and disk, so wrong bytes never come out.
        Thread-safe: call it from a pool. Hold reading() around its use so a prune sweep
        cannot remove chunks of a point deleted meanwhile."""
        return reader.slot_fetcher(self, point_id, disk_key, index)

    def export_raw(
        self,
        point_id: str,
        disk_key: str,
        dest: Path | str,
        threads: int = 2,
        overwrite: bool = False,
    ) -> int:
        """Write the disk to a sparse raw image; returns the data bytes written. On any
        error the partial file is removed."""
        return reader.export_raw(self, point_id, disk_key, Path(dest), threads, overwrite)
