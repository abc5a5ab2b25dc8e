"""vigil repository: deduplicated, compressed, encrypted storage of disk images.

Owns the repository format (config, keys, chunks, indexes, manifests, tombstones, heads,
lock objects), creating and opening repositories, writing and reading restore points,
verify, prune, and this machine's local state about a repository (state.py). Imports none
of watcher, policies, disk_io or protector. Modules: config, opening, keys, codec, backend,
objects, points, writer, reader, repolock, state, verify, prune, admin (init/key commands),
cli (verify/prune/export/catalog commands); repo.Repository is the façade over them.

Public API (see docs/repository-format.md for the on-disk format):

    repo = Repository.init(path, chunk_size=1 << 20, passphrase=None)  # or joins one
    repo = Repository.open(path, passphrase=None)
    with repo.begin_point(VmIdentity(...)) as pw:          # holds the shared lock
        w = pw.disk_writer(capacity, base=pw.previous_index(disk_key))
        w.put(slot, data)                                   # changed slots, any thread
        index = w.finish()
        point_id = pw.commit(disks=[DiskRecord.for_index(disk_key, index, ...)], ...)
    repo.read_disk(point_id, disk_key) -> iterator of (offset, bytes | None)  # holds the lock
    _m, index = repo.disk_index(point_id, disk_key)
    fetch = repo.slot_fetcher(point_id, disk_key, index)  # slot -> verified bytes | None (hole)
    with repo.reading(): ...                    # shared lock for other readers of chunks
    verify(repo, read_data=True) / prune(repo, rule_for)
    repo.state: LocalState  # this machine's heads, locks and job journal, outside the repo
"""

from repository.errors import (
    ConfigTamperedError,
    CorruptChunkError,
    CorruptObjectError,
    ManifestError,
    PassphraseRequiredError,
    RepositoryBusyError,
    RepositoryError,
    RepositoryExistsError,
    WrongPassphraseError,
)
from repository.index import DiskIndex, WriteStats
from repository.keys import KdfParams
from repository.manifest import DiskRecord, Manifest, SkippedDisk, VmIdentity
from repository.prune import KeepLast, KeepRule, PruneResult, prune
from repository.repo import DEFAULT_CHUNK_SIZE, DiskWriter, PointWriter, Repository
from repository.state import LocalState
from repository.verify import VerifyReport, scrub, verify

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ConfigTamperedError",
    "CorruptChunkError",
    "CorruptObjectError",
    "DiskIndex",
    "DiskRecord",
    "DiskWriter",
    "KdfParams",
    "KeepLast",
    "KeepRule",
    "LocalState",
    "Manifest",
    "ManifestError",
    "PassphraseRequiredError",
    "PointWriter",
    "PruneResult",
    "Repository",
    "RepositoryBusyError",
    "RepositoryError",
    "RepositoryExistsError",
    "SkippedDisk",
    "VerifyReport",
    "VmIdentity",
    "WriteStats",
    "WrongPassphraseError",
    "prune",
    "scrub",
    "verify",
]
