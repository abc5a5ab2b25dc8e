"""The repository: opening, writing restore points, reading disks back.

Layout under the backend (see docs/repository-format.md):
    config, keys/<slot>, chunks/<ab>/<id>, indexes/<id>, manifests/<point>, tombstones/<point>
Local-only beside it: locks/ (flock files) and catalog.db.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from repository import codec
from repository.backend import Backend, LocalBackend
from repository.codec import ZERO_ID, ObjectType, chunk_key
from repository.errors import (
    BackendError,
    ConfigTamperedError,
    CorruptChunkError,
    CorruptObjectError,
    DiskNotFoundError,
    ManifestError,
    ObjectNotFoundError,
    PassphraseRequiredError,
    PointNotFoundError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    WrongPassphraseError,
)
from repository.index import DiskIndex, WriteStats, slot_count
from repository.keys import (
    KdfParams,
    KeySet,
    Unwrapped,
    config_mac,
    keyset_from_master,
    keyset_unencrypted,
    unwrap_master,
    wrap_master,
)
from repository.locks import FileLock, locked
from repository.manifest import (
    DiskRecord,
    Manifest,
    SkippedDisk,
    Tombstone,
    VmIdentity,
    seal,
    unseal,
)
from repository.s3.pointlock import retain_new_point

log = structlog.get_logger(__name__)

# 1 MiB: measured against 4 MiB on the shared workload (bench/bench_repository.py), a 1 %
# CBT incremental reads and stores 2.3x less (4.0 % vs 9.4 % of a full) at equal full
# and restore speed; indexes grow to 32 bytes per MiB of disk, which is cheap.
DEFAULT_CHUNK_SIZE = 1 << 20
REPO_FORMAT = "vigil-repository"
CONFIG_KEY = "config"
T = TypeVar("T")
R = TypeVar("R")


def index_key(index_id: bytes | str) -> str:
    return f"indexes/{index_id if isinstance(index_id, str) else index_id.hex()}"


def manifest_key(point_id: str) -> str:
    return f"manifests/{point_id}"


def tombstone_key(point_id: str) -> str:
    return f"tombstones/{point_id}"


def vm_key_of(point_id: str) -> str:
    return point_id.split("-", 1)[0]


def seq_of(key: str) -> int:
    """The seq in a manifest or tombstone name (`<vm key>-<time>Z-<seq>`); 0 if none."""
    tail = key.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass(frozen=True, slots=True)
class DamagedObject:
    """A manifest or tombstone that could not be read."""

    key: str
    point_id: str
    reason: str


def warn_damaged(bad: Iterable[DamagedObject]) -> None:
    for d in bad:
        log.warning(
            "repository.manifest_unreadable",
            object=d.key,
            point=d.point_id,
            reason=d.reason,
            fix="skipped; run `vigil verify` and restore the object from a copy if you have one",
        )


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: str
    chunk_size: int
    encryption: str  # "aes-256-gcm" or "none"
    id_key: str | None  # only for unencrypted repositories

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {
            "format": REPO_FORMAT,
            "version": codec.FORMAT_VERSION,
            "repo_id": self.repo_id,
            "chunk_size": self.chunk_size,
            "encryption": self.encryption,
        }
        if self.id_key is not None:
            d["id_key"] = self.id_key
        return json.dumps(d, sort_keys=True, indent=1).encode()

    def canonical(self) -> bytes:
        """Whitespace-free form: what the key slots' config MAC covers."""
        d = json.loads(self.to_bytes())
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            d = json.loads(data)
            if d["format"] != REPO_FORMAT or d["version"] != codec.FORMAT_VERSION:
                raise ValueError(f"format {d['format']} version {d['version']} not supported")
            return cls(d["repo_id"], int(d["chunk_size"]), d["encryption"], d.get("id_key"))
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{where}: bad repository config: {exc}") from exc


def _check_initialisable(root: Path) -> None:
    """Only an empty directory, or one where a concurrent init has begun (key slots,
    locks, temp files), may become a repository."""
    if not root.exists():
        return
    allowed = {"keys", "locks", CONFIG_KEY}
    others = sorted(
        p.name for p in root.iterdir() if p.name not in allowed and not p.name.startswith(".tmp-")
    )
    if others:
        raise RepositoryExistsError(
            f"{root} is not empty and not a vigil repository (it holds {', '.join(others[:5])}); "
            "choose an empty or new directory"
        )


def _refuse_downgrade(root: Path, passphrase: str | None, slots: list[str]) -> None:
    """An unencrypted config must not silently win over an expected encryption: the config
    is cleartext, so replacing it would make us write plaintext and trust unkeyed MACs."""
    if passphrase is not None:
        raise ConfigTamperedError(
            f"repository {root}: its config says unencrypted but a passphrase is configured; "
            "refusing to write plaintext. If this repository really is unencrypted, remove the "
            f"passphrase from the configuration; otherwise {root / CONFIG_KEY} was replaced "
            "(encryption downgrade): restore the original config"
        )
    if slots:
        raise ConfigTamperedError(
            f"repository {root}: its config says unencrypted but it has {len(slots)} key slot(s) "
            f"({slots[0]}): {root / CONFIG_KEY} was probably replaced (encryption downgrade); "
            "restore the original config"
        )


def _check_config(root: Path, config: RepoConfig, got: Unwrapped, slot: str) -> None:
    if got.config_mac is None:
        # Written before configs were authenticated: usable, but edits go unnoticed.
        log.warning(
            "repository.config_unauthenticated",
            path=str(root),
            slot=slot,
            fix="change the passphrase once to seal the config into a new key slot",
        )
        return
    if not hmac.compare_digest(got.config_mac, config_mac(got.master, config.canonical())):
        raise ConfigTamperedError(
            f"{root / CONFIG_KEY} does not match the config sealed in key slot {slot}: it was "
            "edited or replaced (chunk size, repository id and encryption must never change); "
            "restore the original config"
        )


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn over items on a thread pool, results in input order, a bounded window ahead."""
    window = max(2, threads * 2)
    with ThreadPoolExecutor(threads, thread_name_prefix="repo") as pool:
        pending: deque[Future[R]] = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


class Repository:
    """A vigil repository. Thread-safe: every method may be called from any thread."""

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r}, encrypted={self.encrypted})"

    def __init__(
        self,
        root: Path,
        backend: Backend,
        config: RepoConfig,
        keys: KeySet,
        slot: str | None = None,
        master: bytes | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        self.config = config
        self.keys = keys
        self._slot = slot
        self._master = master
        self._zeros = bytes(config.chunk_size)

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path | str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        passphrase: str | None = None,
        kdf: KdfParams | None = None,
        backend: Backend | None = None,
    ) -> Repository:
        """Create a repository. If `path` already holds one — typically because another
        process created it a moment ago — open that one with the same passphrase instead
        (RepositoryExistsError when the passphrase or encryption do not fit it).
        `backend`: the objects elsewhere (S3); `path` then keeps only local state."""
        root = Path(path)
        if chunk_size < 4096 or chunk_size % 4096 or chunk_size > (1 << 30):
            raise ValueError(f"chunk size {chunk_size}: must be a multiple of 4 KiB up to 1 GiB")
        backend = backend or LocalBackend(root)
        if backend.exists(CONFIG_KEY):
            return cls._join_existing(root, passphrase, chunk_size, backend)
        _check_initialisable(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        repo_id = secrets.token_hex(16)
        if passphrase is None:
            id_key = secrets.token_bytes(32)
            config = RepoConfig(repo_id, chunk_size, "none", id_key.hex())
            keys, slot, master = keyset_unencrypted(id_key), None, None
        else:
            master = secrets.token_bytes(32)
            config = RepoConfig(repo_id, chunk_size, "aes-256-gcm", None)
            slot = secrets.token_hex(8)
            blob = wrap_master(master, passphrase, repo_id, kdf or KdfParams(), config.canonical())
            backend.put_if_absent(f"keys/{slot}", blob)
            keys = keyset_from_master(master)
        # The config goes last and write-once: it arbitrates between concurrent inits.
        if not backend.put_if_absent(CONFIG_KEY, config.to_bytes()):
            if slot is not None:
                backend.delete(f"keys/{slot}")  # our slot wraps a key nobody uses
            return cls._join_existing(root, passphrase, chunk_size, backend)
        log.info(
            "repository.init",
            path=str(root),
            chunk_size=chunk_size,
            encrypted=passphrase is not None,
        )
        return cls(root, backend, config, keys, slot, master)

    @classmethod
    def _join_existing(
        cls, root: Path, passphrase: str | None, chunk_size: int, backend: Backend
    ) -> Repository:
        try:
            repo = cls.open(root, passphrase, backend)
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
        cls, path: Path | str, passphrase: str | None = None, backend: Backend | None = None
    ) -> Repository:
        root = Path(path)
        backend = backend or LocalBackend(root)
        try:
            config = RepoConfig.from_bytes(backend.get(CONFIG_KEY), str(root / CONFIG_KEY))
        except ObjectNotFoundError:
            raise RepositoryNotFoundError(f"{root} is not a vigil repository (no config)") from None
        slots = sorted(info.key for info in backend.list("keys/"))
        if config.encryption == "none":
            _refuse_downgrade(root, passphrase, slots)
            if config.id_key is None:
                raise RepositoryError(f"{root / CONFIG_KEY}: unencrypted but no id_key")
            return cls(root, backend, config, keyset_unencrypted(bytes.fromhex(config.id_key)))
        if config.encryption != "aes-256-gcm":
            raise RepositoryError(f"{root / CONFIG_KEY}: unknown encryption {config.encryption!r}")
        if passphrase is None:
            raise PassphraseRequiredError(f"repository {root} is encrypted: a passphrase is needed")
        malformed: list[str] = []
        for key in slots:
            try:
                got = unwrap_master(backend.get(key), passphrase, config.repo_id, key)
            except (ValueError, ObjectNotFoundError) as exc:
                malformed.append(str(exc))  # a stray or damaged slot must not block the others
                continue
            if got is not None:
                _check_config(root, config, got, key)
                keys = keyset_from_master(got.master)
                return cls(root, backend, config, keys, key.removeprefix("keys/"), got.master)
        extra = f" (unreadable key slots: {'; '.join(malformed)})" if malformed else ""
        raise WrongPassphraseError(f"wrong passphrase for repository {root}{extra}")

    @property
    def encrypted(self) -> bool:
        return self.keys.enc_key is not None

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    def change_passphrase(self, new_passphrase: str, kdf: KdfParams | None = None) -> None:
        """Add a slot for the new passphrase, then drop the slot the current one opened."""
        if self._master is None or self._slot is None:
            raise RepositoryError(f"repository {self.root} is not encrypted")
        slot = secrets.token_hex(8)
        blob = wrap_master(
            self._master,
            new_passphrase,
            self.config.repo_id,
            kdf or KdfParams(),
            self.config.canonical(),
        )
        self.backend.put_if_absent(f"keys/{slot}", blob)
        self.backend.delete(f"keys/{self._slot}")
        self._slot = slot
        log.info("repository.passphrase_changed", path=str(self.root))

    # -- objects ----------------------------------------------------------------------------

    def load_chunk(self, chunk_id: bytes) -> bytes:
        key = chunk_key(chunk_id)
        return codec.decode(
            self.keys, key, self.backend.get(key), ObjectType.CHUNK, chunk_id, verify_id=True
        )

    def put_chunk(
        self,
        chunk_id: bytes,
        data: bytes | bytearray | memoryview,
        verify_existing: bool = False,
    ) -> int:
        """Store one chunk (`chunk_id` = codec.object_id of `data`); returns the bytes
        written, 0 when the object was already there. A reused object is touched so that
        a sweep's grace period protects it until our commit. With `verify_existing` a
        stored object is decoded first and, if damaged, atomically replaced (healed)."""
        key = chunk_key(chunk_id)
        if not verify_existing:
            if self.backend.touch(key):
                return 0
            blob = codec.encode(self.keys, ObjectType.CHUNK, chunk_id, data)
            return len(blob) if self.backend.put_if_absent(key, blob) else 0
        if self._intact(key, ObjectType.CHUNK, chunk_id):
            self.backend.touch(key)
            return 0
        blob = codec.encode(self.keys, ObjectType.CHUNK, chunk_id, data)
        if self.backend.put_if_absent(key, blob):
            return len(blob)
        if self._intact(key, ObjectType.CHUNK, chunk_id):
            return 0  # another writer stored it a moment ago
        self._heal(key, blob)
        return len(blob)

    def store_index(self, index: DiskIndex) -> DiskIndex:
        plain = index.to_bytes()
        iid = codec.object_id(self.keys, plain)
        blob = codec.encode(self.keys, ObjectType.INDEX, iid, plain)
        key = index_key(iid)
        if not self.backend.put_if_absent(key, blob):
            if self._intact(key, ObjectType.INDEX, iid):
                # Reused (e.g. an old orphan with the same content): like a reused chunk,
                # it must count as new for a sweep's grace period until our commit.
                self.backend.touch(key)
            else:
                self._heal(key, blob)
        return replace(index, index_id=iid)

    def _intact(self, key: str, otype: ObjectType, oid: bytes) -> bool:
        """Whether the stored object decodes to content matching its id."""
        try:
            codec.decode(self.keys, key, self.backend.get(key), otype, oid, verify_id=True)
        except (CorruptObjectError, ObjectNotFoundError):
            return False
        return True

    def _heal(self, key: str, blob: bytes) -> None:
        # Same id = same plaintext: replacing the damaged object loses nothing.
        self.backend.replace(key, blob)
        log.warning("repository.object_healed", object=key)

    def load_index(self, index_id: str) -> DiskIndex:
        key, iid = index_key(index_id), bytes.fromhex(index_id)
        plain = codec.decode(
            self.keys, key, self.backend.get(key), ObjectType.INDEX, iid, verify_id=True
        )
        try:
            return DiskIndex.from_bytes(plain, key, iid)
        except ValueError as exc:
            raise CorruptObjectError(key, str(exc)) from None

    def _put_sealed(
        self,
        key: str,
        name: str,
        kind: str,
        otype: ObjectType,
        body: dict,
        exist_ok: bool = False,
    ) -> None:
        plain = seal(self.keys.mac_key, kind, body)
        blob = codec.encode(self.keys, otype, codec.name_id(self.keys, name), plain)
        if not self.backend.put_if_absent(key, blob) and not exist_ok:
            raise RepositoryError(f"{key} already exists")

    def _get_sealed(self, key: str, name: str, kind: str, otype: ObjectType) -> dict:
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

    # -- manifests --------------------------------------------------------------------------

    def list_points(self, vm_key: str | None = None) -> list[str]:
        prefix = "manifests/" + (f"{vm_key}-" if vm_key else "")
        return sorted(i.key.removeprefix("manifests/") for i in self.backend.list(prefix))

    def load_manifest(self, point_id: str) -> Manifest:
        try:
            body = self._get_sealed(
                manifest_key(point_id), point_id, "manifest", ObjectType.MANIFEST
            )
        except ObjectNotFoundError:
            raise PointNotFoundError(f"no restore point {point_id!r} in {self.root}") from None
        try:
            return Manifest.from_body(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{manifest_key(point_id)}: malformed: {exc}") from exc

    def scan_manifests(
        self, vm_key: str | None = None
    ) -> tuple[list[Manifest], list[DamagedObject]]:
        """Every readable manifest, and the ones that fail to read (named, with why).
        A manifest deleted while we list is simply gone."""
        good: list[Manifest] = []
        bad: list[DamagedObject] = []
        for pid in self.list_points(vm_key):
            try:
                good.append(self.load_manifest(pid))
            except PointNotFoundError:
                continue
            except ManifestError as exc:
                bad.append(DamagedObject(manifest_key(pid), pid, str(exc)))
        return good, bad

    def manifests(self, vm_key: str | None = None) -> list[Manifest]:
        """Readable manifests; each unreadable one is skipped with a warning naming it
        (verify reports it as damage) so one bad object does not stop backups or prune."""
        good, bad = self.scan_manifests(vm_key)
        warn_damaged(bad)
        return good

    def scan_tombstones(
        self, vm_key: str | None = None
    ) -> tuple[list[Tombstone], list[DamagedObject]]:
        prefix = "tombstones/" + (f"{vm_key}-" if vm_key else "")
        good: list[Tombstone] = []
        bad: list[DamagedObject] = []
        for info in self.backend.list(prefix):
            pid = info.key.removeprefix("tombstones/")
            try:
                body = self._get_sealed(info.key, pid, "tombstone", ObjectType.TOMBSTONE)
                good.append(Tombstone.from_body(body))
            except ObjectNotFoundError:
                continue
            except ManifestError as exc:
                bad.append(DamagedObject(info.key, pid, str(exc)))
            except (KeyError, TypeError, ValueError) as exc:
                bad.append(DamagedObject(info.key, pid, f"{info.key}: malformed: {exc}"))
        return sorted(good, key=lambda t: t.seq), bad

    def tombstones(self, vm_key: str | None = None) -> list[Tombstone]:
        good, bad = self.scan_tombstones(vm_key)
        warn_damaged(bad)
        return good

    def latest_point(self, vm_key: str) -> Manifest | None:
        """The VM's newest readable point (an unreadable newer one is skipped)."""
        points = self.manifests(vm_key)
        return max(points, key=lambda m: m.seq) if points else None

    def high_water(self, vm_key: str) -> tuple[int, str | None]:
        """(seq, point id) of the highest seq the VM ever used, from the object names of
        its manifests and tombstones: unreadable ones count too, so no seq is reused."""
        best: tuple[int, str | None] = (0, None)
        for kind in ("manifests/", "tombstones/"):
            for info in self.backend.list(f"{kind}{vm_key}-"):
                if seq_of(info.key) > best[0]:
                    best = (seq_of(info.key), info.key.removeprefix(kind))
        return best

    def vm_lock_path(self, vm_key: str) -> Path:
        return self.root / "locks" / f"vm-{vm_key}.lock"

    def delete_point(self, manifest: Manifest, reason: str) -> None:
        """Tombstone first (keeps the hash chain checkable), then drop the manifest. Holds
        the VM's lock so a commit never sees the point half deleted."""
        m = manifest
        t = Tombstone(m.point_id, m.vm, m.seq, m.hash, m.committed_at, reason, datetime.now(UTC))
        key = tombstone_key(manifest.point_id)
        with locked(self.vm_lock_path(m.vm.key), exclusive=True):
            # Already tombstoned (a concurrent or interrupted delete): keep the first one.
            self._put_sealed(
                key, t.point_id, "tombstone", ObjectType.TOMBSTONE, t.body(), exist_ok=True
            )
            self.backend.delete(manifest_key(manifest.point_id))
        log.info("repository.point_deleted", point=manifest.point_id, reason=reason)

    # -- writing ----------------------------------------------------------------------------

    def begin_point(self, vm: VmIdentity, lock_timeout: float | None = None) -> PointWriter:
        """Start writing a restore point; use as a context manager (leaving it without
        commit() abandons the point, its new chunks become orphans that prune removes)."""
        return PointWriter(self, vm, lock_timeout)

    @property
    def repo_lock_path(self) -> Path:
        return self.root / "locks" / "repository.lock"

    # -- reading ----------------------------------------------------------------------------

    def disk_index(self, point_id: str, disk_key: str) -> tuple[Manifest, DiskIndex]:
        m = self.load_manifest(point_id)
        rec = m.disk(disk_key)
        if rec is None:
            names = ", ".join(d.key for d in m.disks) or "none"
            raise DiskNotFoundError(
                f"restore point {point_id} has no disk {disk_key!r} (disks: {names})"
            )
        try:
            return m, self.load_index(rec.index_id)
        except (CorruptObjectError, ObjectNotFoundError) as exc:
            raise RepositoryError(f"restore point {point_id} disk {disk_key!r}: {exc}") from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the repository lock shared while reading points: a prune sweep then waits
        (or defers) instead of removing chunks of a point deleted under a running restore."""
        lock = self._read_lock()
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _read_lock(self) -> FileLock | None:
        lock = FileLock(self.repo_lock_path, exclusive=False)
        try:
            lock.acquire()
        except OSError as exc:
            # A read-only copy (no locks/ possible) cannot be pruned under us either.
            log.debug("repository.read_unlocked", path=str(self.root), reason=str(exc))
            return None
        return lock

    def read_disk(
        self, point_id: str, disk_key: str, threads: int = 2
    ) -> Iterator[tuple[int, bytes | None]]:
        """(offset, data) in disk order; data None for an all-zero slot (a hole). Every
        chunk is re-hashed; a bad one raises CorruptChunkError and nothing of it is returned.
        The repository lock is held shared until the stream ends or is closed."""
        lock = self._read_lock()
        try:
            _m, index = self.disk_index(point_id, disk_key)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        fetch = self._fetcher(point_id, disk_key, index)
        return _LockedStream(ordered_map(fetch, range(len(index.ids)), threads), lock)

    def slot_fetcher(
        self, point_id: str, disk_key: str, index: DiskIndex
    ) -> Callable[[int], bytes | None]:
        """A function slot -> that slot's bytes of the disk (`index` from disk_index), None
        for an all-zero slot (a hole). Each chunk is read, decrypted, decompressed and
        re-hashed against its id; a missing, damaged or wrongly sized one raises
        CorruptChunkError naming the chunk, point and disk, so wrong bytes never come out.
        Thread-safe: call it from a pool. Hold reading() around its use so a prune sweep
        cannot remove chunks of a point deleted meanwhile."""

        def fetch(slot: int) -> bytes | None:
            cid = index.ids[slot]
            if cid == ZERO_ID:
                return None
            try:
                data = self.load_chunk(cid)
            except (CorruptObjectError, ObjectNotFoundError, BackendError) as exc:
                # An I/O error on the chunk's file (a bad sector) is damage of this chunk.
                raise CorruptChunkError(cid.hex(), point_id, disk_key, str(exc)) from exc
            if len(data) != index.slot_length(slot):
                raise CorruptChunkError(
                    cid.hex(),
                    point_id,
                    disk_key,
                    f"length {len(data)}, slot {slot} needs {index.slot_length(slot)}",
                )
            return data

        return fetch

    def _fetcher(
        self, point_id: str, disk_key: str, index: DiskIndex
    ) -> Callable[[int], tuple[int, bytes | None]]:
        fetch = self.slot_fetcher(point_id, disk_key, index)
        return lambda slot: (slot * index.chunk_size, fetch(slot))

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
        with self.reading():
            return self._export_raw(point_id, disk_key, Path(dest), threads, overwrite)

    def _export_raw(
        self, point_id: str, disk_key: str, dest: Path, threads: int, overwrite: bool
    ) -> int:
        _m, index = self.disk_index(point_id, disk_key)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(dest, flags, 0o600)
        except FileExistsError:
            raise RepositoryError(f"export target {dest} exists") from None
        fetch = self._fetcher(point_id, disk_key, index)

        def copy(slot: int) -> int:
            # Written by the worker itself: order does not matter for pwrite.
            offset, data = fetch(slot)
            return os.pwrite(fd, data, offset) if data is not None else 0

        try:
            os.ftruncate(fd, index.capacity)
            data_slots = [s for s, cid in enumerate(index.ids) if cid != ZERO_ID]
            written = sum(ordered_map(copy, data_slots, threads))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            dest.unlink(missing_ok=True)
            raise
        os.close(fd)
        return written


class _LockedStream(Iterator[T]):
    """An iterator that releases a lock when exhausted, failed, closed or collected."""

    def __init__(self, inner: Iterator[T], lock: FileLock | None) -> None:
        self._inner = inner
        self._lock = lock

    def __iter__(self) -> _LockedStream[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._inner)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self) -> None:
        self.close()


class PointWriter:
    """One restore point being written; holds the repository lock shared until closed."""

    def __init__(self, repo: Repository, vm: VmIdentity, lock_timeout: float | None) -> None:
        self.repo = repo
        self.vm = vm
        self._lock = FileLock(repo.repo_lock_path, exclusive=False)
        self._lock.acquire(lock_timeout)
        try:
            # Read after the lock: a sweep cannot remove this base's chunks while we run.
            self.previous = repo.latest_point(vm.key)
        except BaseException:
            self._lock.release()
            raise
        self.committed: str | None = None

    def __enter__(self) -> PointWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._lock.release()

    def previous_index(self, disk_key: str) -> DiskIndex | None:
        """The same disk's index in the VM's latest point, if it can seed an incremental."""
        if self.previous is None or self.previous.chunk_size != self.repo.chunk_size:
            return None
        rec = self.previous.disk(disk_key)
        if rec is None:
            return None
        try:
            return self.repo.load_index(rec.index_id)
        except (CorruptObjectError, ObjectNotFoundError) as exc:
            # A damaged base must not stop backups: read this disk in full instead.
            log.warning(
                "repository.base_index_unreadable",
                object=index_key(rec.index_id),
                point=self.previous.point_id,
                disk=disk_key,
                reason=str(exc),
                fix="taking a full backup of this disk; run `vigil verify`",
            )
            return None

    def disk_writer(
        self,
        capacity: int,
        base: DiskIndex | None = None,
        *,
        verify_existing: bool | None = None,
    ) -> DiskWriter:
        """`verify_existing` (default: True for a full backup, i.e. no base) decodes each
        chunk that is already stored and replaces it if it is damaged."""
        return DiskWriter(self.repo, capacity, base, verify_existing)

    def commit(
        self,
        *,
        disks: Sequence[DiskRecord],
        started_at: datetime,
        finished_at: datetime | None = None,
        skipped_disks: Sequence[SkippedDisk] = (),
        policy: str | None = None,
        job_id: str | None = None,
        config_info: dict[str, Any] | None = None,
        vss_manifest: bytes | None = None,
    ) -> str:
        """Write the manifest (the commit point) and return the new point id."""
        if self.committed:
            raise RepositoryError(f"point {self.committed} already committed")
        keys = [d.key for d in disks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate disk keys in {keys}")
        for d in disks:
            if not self.repo.backend.exists(index_key(d.index_id)):
                raise RepositoryError(f"disk {d.key!r}: index {d.index_id} is not stored")
        # Object lock (S3): every object the point references stays locked past its commit.
        retain_new_point(self.repo, self.previous, disks)
        with locked(self.repo.vm_lock_path(self.vm.key), exclusive=True):
            head = self._head()
            now = datetime.now(UTC)
            seq = head[0] + 1
            point_id = f"{self.vm.key}-{now:%Y%m%dT%H%M%S}Z-{seq:06d}"
            m = Manifest(
                point_id=point_id,
                vm=self.vm,
                seq=seq,
                prev_point_id=head[1],
                prev_hash=head[2],
                chunk_size=self.repo.chunk_size,
                started_at=started_at,
                finished_at=finished_at or now,
                committed_at=now,
                disks=tuple(disks),
                skipped_disks=tuple(skipped_disks),
                policy=policy,
                job_id=job_id,
                config_info=config_info,
                vss_manifest=vss_manifest,
            )
            self.repo._put_sealed(
                manifest_key(point_id), point_id, "manifest", ObjectType.MANIFEST, m.body()
            )
        self.committed = point_id
        log.info("repository.point_committed", point=point_id, disks=len(disks))
        return point_id

    def _head(self) -> tuple[int, str | None, str | None]:
        """(seq, point id, hash) of the VM's newest point, live or tombstoned. The seq
        comes from the object names, so an unreadable newest point still counts; its hash
        is then unknown (None) and verify reports the break at the damaged point."""
        best: tuple[int, str | None, str | None] = (0, None, None)
        for m in self.repo.manifests(self.vm.key):
            if m.seq > best[0]:
                best = (m.seq, m.point_id, m.hash)
        for t in self.repo.tombstones(self.vm.key):
            if t.seq > best[0]:
                best = (t.seq, t.point_id, t.manifest_hash)
        high, pid = self.repo.high_water(self.vm.key)
        return (high, pid, None) if high > best[0] else best


class DiskWriter:
    """Fills one disk's index. put() is thread-safe; call it for changed slots only."""

    def __init__(
        self,
        repo: Repository,
        capacity: int,
        base: DiskIndex | None,
        verify_existing: bool | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"disk capacity {capacity} must be positive")
        self.repo = repo
        self.capacity = capacity
        self.chunk_size = repo.chunk_size
        n = slot_count(capacity, self.chunk_size)
        if base is not None and (base.capacity != capacity or base.chunk_size != self.chunk_size):
            raise ValueError(
                f"base index ({base.capacity} bytes, chunk {base.chunk_size}) does not match "
                f"the disk ({capacity} bytes, chunk {self.chunk_size}): take a full backup"
            )
        self._ids: list[bytes] = list(base.ids) if base else [ZERO_ID] * n
        # A full backup trusts nothing already stored: it re-checks every chunk it reuses,
        # so a damaged chunk gets healed instead of being referenced again forever.
        self._verify = base is None if verify_existing is None else verify_existing
        self._known: set[bytes] = base.referenced() if base and not self._verify else set()
        self._lock = threading.Lock()
        self._stats = {f.name: 0 for f in fields(WriteStats)}
        self._stats["slots"] = n
        self._finished = False
        self._failed: str | None = None

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                self._stats[k] += v

    def put(self, slot: int, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise RepositoryError("disk writer already finished")
        if not 0 <= slot < len(self._ids):
            raise IndexError(f"slot {slot} out of range (disk has {len(self._ids)} slots)")
        want = min(self.chunk_size, self.capacity - slot * self.chunk_size)
        if len(data) != want:
            raise ValueError(f"slot {slot}: {len(data)} bytes, expected {want}")
        zeros = self.repo._zeros if want == self.chunk_size else bytes(want)
        if data == zeros:
            self._ids[slot] = ZERO_ID
            self._count(changed_slots=1, zero_slots=1)
            return
        cid = codec.object_id(self.repo.keys, data)
        with self._lock:
            known = cid in self._known
        try:
            written = 0 if known else self.repo.put_chunk(cid, data, self._verify)
        except BaseException as exc:
            # The slot now holds neither old nor new data: this disk cannot be finished.
            self._failed = f"slot {slot}: {exc}"
            raise
        self._ids[slot] = cid
        with self._lock:
            self._known.add(cid)
        if written:
            self._count(changed_slots=1, new_chunks=1, new_bytes=written)
        else:
            self._count(changed_slots=1, dedup_chunks=1)

    def finish(self) -> DiskIndex:
        """Store the index; its id goes into the manifest via DiskRecord.for_index."""
        if self._failed:
            raise RepositoryError(f"disk writer had a failed put ({self._failed}): no index")
        self._finished = True
        index = DiskIndex(
            self.chunk_size, self.capacity, tuple(self._ids), stats=WriteStats(**self._stats)
        )
        return self.repo.store_index(index)
