"""A whole vigil repository on a real SeaweedFS: backup/restore byte-exact, a server
killed mid-backup, object lock across a backup chain, restore past delete markers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from repo_helpers import CHUNK, FAST_KDF, PASSPHRASE, make_disk, read_back, vm, write_point

from repository import KeepLast, Repository, prune, verify
from repository.codec import ZERO_ID, chunk_key
from repository.errors import RepositoryNotFoundError
from repository.s3 import S3Backend, S3UnavailableError, open_s3_backend
from tests.s3_server import SeaweedServer

SIZE = 24 * CHUNK + 1000  # a partial last slot too


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket("repos")
        server.make_bucket("immutable", lock=True)
        yield server


def s3_repo(backend: S3Backend, state: Path) -> Repository:
    return Repository.init(
        state, chunk_size=CHUNK, passphrase=PASSPHRASE, kdf=FAST_KDF, backend=backend
    )


def test_backup_and_restore_byte_exact(weed: SeaweedServer, tmp_path: Path) -> None:
    backend = open_s3_backend(weed.options("repos", "exact"))
    repo = s3_repo(backend, tmp_path / "state")
    disk = make_disk(SIZE, seed=1, zero_slots=(3, 4))
    p1 = write_point(repo, vm(), {"d0": disk})
    changed = bytearray(disk)
    changed[5 * CHUNK : 5 * CHUNK + 10] = b"new data!!"
    changed[-3:] = b"end"
    p2 = write_point(repo, vm(), {"d0": changed}, changed={"d0": {5, 24}})
    # Opened afresh (another process): the objects live in the bucket only.
    again = Repository.open(
        tmp_path / "state2", PASSPHRASE, backend=open_s3_backend(weed.options("repos", "exact"))
    )
    assert again.list_points() == sorted([p1, p2])
    assert read_back(again, p1, "d0") == bytes(disk)
    assert read_back(again, p2, "d0") == bytes(changed)
    report = verify(again, read_data=True)
    assert report.ok and report.chunks_read > 0
    assert not any(k.startswith("locks/") for k in (i.key for i in backend.list("")))
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(
            tmp_path / "s3", PASSPHRASE, backend=open_s3_backend(weed.options("repos", "empty"))
        )


def test_server_killed_mid_backup(tmp_path: Path) -> None:
    with SeaweedServer(tmp_path / "weed") as server:
        server.make_bucket("crash")
        backend = open_s3_backend(server.options("crash", "r", max_attempts=2))
        repo = s3_repo(backend, tmp_path / "state")
        disk = make_disk(SIZE, seed=2)
        p1 = write_point(repo, vm(), {"d0": disk})
        changed = bytearray(make_disk(SIZE, seed=3))
        with pytest.raises(S3UnavailableError, match="earlier restore points are intact"):
            with repo.begin_point(vm()) as pw:
                w = pw.disk_writer(SIZE, pw.previous_index("d0"))
                for slot in range(25):
                    if slot == 10:
                        server.kill()  # the service dies under the backup
                    w.put(slot, bytes(changed[slot * CHUNK : (slot + 1) * CHUNK]))
        server.start()
        assert repo.list_points() == [p1]
        assert read_back(repo, p1, "d0") == bytes(disk)
        p2 = write_point(repo, vm(), {"d0": changed})
        assert read_back(repo, p2, "d0") == bytes(changed)
        assert verify(repo, read_data=True).ok


def _referenced(repo: Repository, point: str) -> set[str]:
    _m, index = repo.disk_index(point, "d0")
    return {chunk_key(c) for c in index.ids if c != ZERO_ID}


def test_object_lock_across_a_backup_chain(weed: SeaweedServer, tmp_path: Path) -> None:
    """Each point's objects stay locked past its creation; reused chunks are extended
    only when the base point's generation no longer covers the new point."""
    opts = weed.options("immutable", "chain", object_lock_days=5)
    backend = open_s3_backend(opts)
    repo = s3_repo(backend, tmp_path / "state")
    disk = make_disk(SIZE, seed=4)
    p1 = write_point(repo, vm(), {"d0": disk})
    m1 = repo.load_manifest(p1)
    for key in [*_referenced(repo, p1), f"manifests/{p1}", "config"]:
        _mode, until = backend.retention_of(key)
        assert until >= m1.committed_at + timedelta(days=5)
    # Next day's incremental: the base's generation covers it, no call.
    base = _referenced(repo, p1)
    fresh = open_s3_backend(opts)  # a new process: knows nothing of what was set
    assert (
        fresh.retain_point(base, set(), m1.committed_at, m1.committed_at + timedelta(days=1)) == 0
    )
    # Three weeks on, the base generation has run out: each reused chunk once.
    later = m1.committed_at + timedelta(days=21)
    assert fresh.retain_point(base, set(), m1.committed_at, later) == len(base)
    for key in base:
        assert fresh.retention_of(key)[1] >= later + timedelta(days=5)
    # A point made right after that, on top of the extended one, needs nothing again.
    assert fresh.retain_point(base, set(), later, later + timedelta(days=2)) == 0


def test_point_writer_keeps_every_referenced_object_locked(
    weed: SeaweedServer, tmp_path: Path
) -> None:
    opts = weed.options("immutable", "writer", object_lock_days=5)
    repo = s3_repo(open_s3_backend(opts), tmp_path / "state")
    disk = make_disk(SIZE, seed=10)
    write_point(repo, vm(), {"d0": disk})
    # The next backup runs in another process: it remembers no retention it did not set.
    backend = open_s3_backend(opts)
    again = Repository.open(tmp_path / "state", PASSPHRASE, backend=backend)
    changed = bytearray(disk)
    changed[:4] = b"boot"
    p2 = write_point(again, vm(), {"d0": changed}, changed={"d0": {0}})
    assert backend.calls["PutObjectRetention"] == 0  # the base generation covers it
    m2 = again.load_manifest(p2)
    slots = [i.key for i in backend.list("keys/")]
    assert slots
    for key in [
        *_referenced(again, p2),
        f"indexes/{m2.disks[0].index_id}",
        f"manifests/{p2}",
        "config",
        *slots,
    ]:
        _mode, until = backend.retention_of(key)
        assert until >= m2.committed_at + timedelta(days=5), key


def test_restore_past_delete_markers(weed: SeaweedServer, tmp_path: Path) -> None:
    opts = weed.options("immutable", "attacked", object_lock_days=5)
    repo = s3_repo(open_s3_backend(opts), tmp_path / "state")
    disk = make_disk(SIZE, seed=5)
    point = write_point(repo, vm(), {"d0": disk})
    time.sleep(1.1)  # S3 times have one-second resolution
    before_attack = datetime.now(UTC)
    time.sleep(1.1)
    plain = weed.client()
    pages = plain.get_paginator("list_objects_v2").paginate(Bucket="immutable", Prefix="attacked/")
    for page in pages:
        for o in page.get("Contents", ()):
            plain.delete_object(Bucket="immutable", Key=o["Key"])  # delete markers only
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(tmp_path / "s2", PASSPHRASE, backend=open_s3_backend(opts))
    past = open_s3_backend(opts, as_of_time=before_attack)
    recovered = Repository.open(tmp_path / "s3", PASSPHRASE, backend=past)
    assert recovered.list_points() == [point]
    assert read_back(recovered, point, "d0") == bytes(disk)
    assert verify(recovered, read_data=True).ok


def test_prune_keeps_locked_objects_and_reports_them(weed: SeaweedServer, tmp_path: Path) -> None:
    backend = open_s3_backend(weed.options("immutable", "prune", object_lock_days=5))
    repo = s3_repo(backend, tmp_path / "state")
    d1, d2 = make_disk(SIZE, seed=6), make_disk(SIZE, seed=7)
    p1 = write_point(repo, vm(), {"d0": d1})
    p2 = write_point(repo, vm(), {"d0": d2})
    orphan = chunk_key(bytes(32))
    backend.put_if_absent(orphan, b"debris of an abandoned backup")
    later = datetime.now(UTC) + timedelta(hours=2)  # past the sweep's grace period
    result = prune(repo, lambda _vm, _policy: KeepLast(1), now=later)
    assert result.deleted_points == [p1]  # decided, but its manifest is locked:
    assert any(f"manifests/{p1} until" in item for item in result.locked)
    assert any(f"{orphan} until" in item for item in result.locked)
    assert "under object lock" in "\n".join(result.lines())
    assert result.chunks_deleted == 0 and backend.exists(orphan)
    assert repo.list_points() == sorted([p1, p2])  # kept whole, no tombstone
    assert not list(backend.list("tombstones/"))
    assert read_back(repo, p1, "d0") == bytes(d1)
    assert verify(repo, read_data=True).ok


def test_prune_frees_space_on_an_unlocked_bucket(weed: SeaweedServer, tmp_path: Path) -> None:
    backend = open_s3_backend(weed.options("repos", "prune-plain"))
    repo = s3_repo(backend, tmp_path / "state")
    p1 = write_point(repo, vm(), {"d0": make_disk(SIZE, seed=8)})
    d2 = make_disk(SIZE, seed=9)
    p2 = write_point(repo, vm(), {"d0": d2})
    gone = _referenced(repo, p1) - _referenced(repo, p2)
    later = datetime.now(UTC) + timedelta(hours=2)
    result = prune(repo, lambda _vm, _policy: KeepLast(1), now=later)
    assert result.deleted_points == [p1] and not result.locked
    assert result.chunks_deleted == len(gone) > 0
    assert not any(backend.exists(k) for k in gone)
    assert repo.list_points() == [p2] and read_back(repo, p2, "d0") == bytes(d2)
