"""Prune racing other writers and deleters: objects that vanish are "already gone", and
the grace period protects a commit in progress on a host that does not share our lock."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from repo_helpers import CHUNK, chunk_files, make_disk, read_back, vm, write_point

from repository import DiskIndex, DiskRecord, KeepLast, PointWriter, Repository, prune, verify
from repository.backend import LocalBackend, ObjectInfo
from repository.codec import chunk_key


class VanishingBackend(LocalBackend):
    """Another process deletes `victim` right after we listed it."""

    def __init__(self, root: Path, victim: str) -> None:
        super().__init__(root)
        self.victim = victim

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        infos = list(super().list(prefix))
        if any(i.key == self.victim for i in infos):
            self.delete(self.victim)
        yield from infos


def _with_backend(repo: Repository, backend: LocalBackend) -> Repository:
    return Repository(repo.root, backend, repo.config, repo.keys)


def _other_host(repo: Repository, tmp_path: Path) -> Repository:
    """The same storage seen from another machine: its locks are not ours."""
    return Repository(
        repo.root, repo.backend, repo.config, repo.keys, state_dir=tmp_path / "host-b-state"
    )


def test_a_manifest_deleted_while_prune_runs_is_already_gone(
    repo: Repository,
) -> None:
    points = [write_point(repo, vm(), {"d": make_disk(2 * CHUNK, s)}) for s in range(3)]
    racing = _with_backend(repo, VanishingBackend(repo.root, f"manifests/{points[0]}"))
    result = prune(racing, lambda _v, _p: KeepLast(1), grace=timedelta(0))
    assert result.sweep_deferred is None
    assert repo.list_points() == [points[2]]
    assert read_back(repo, points[2], "d") == make_disk(2 * CHUNK, 2)


def test_verify_skips_a_point_pruned_while_it_runs(repo: Repository) -> None:
    points = [write_point(repo, vm(), {"d": make_disk(CHUNK, s)}) for s in range(2)]
    repo.delete_point(repo.load_manifest(points[0]), "test")
    racing = _with_backend(repo, VanishingBackend(repo.root, f"manifests/{points[1]}"))
    report = verify(racing)
    assert not report.bad_manifests


def test_new_chunks_of_a_commit_in_progress_survive_a_sweep(
    repo: Repository, tmp_path: Path
) -> None:
    old = write_point(repo, vm(), {"d": make_disk(3 * CHUNK, 1)})
    disk = make_disk(3 * CHUNK, 2)
    with _other_host(repo, tmp_path).begin_point(vm()) as pw:
        w = pw.disk_writer(len(disk))
        for s in range(3):
            w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
        index = w.finish()
        # Host B's backup holds a shared lock object in the repository: our sweep waits.
        result = prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0), lock_timeout=0.3)
        assert result.deleted_points == [old] and result.sweep_deferred
        assert "backup of vm1" in result.sweep_deferred
        p = pw.commit(disks=[DiskRecord.for_index("d", index)], started_at=datetime.now(UTC))
    assert verify(repo, read_data=True).ok
    assert read_back(repo, p, "d") == disk


def test_a_reused_old_chunk_is_protected_by_the_grace_period_too(
    repo: Repository, tmp_path: Path
) -> None:
    """Dedup against an old unreferenced chunk (here left by a crashed backup) must make
    it young again, or the sweep deletes a chunk the new point is about to reference."""
    disk = make_disk(2 * CHUNK, 3)
    crashed = repo.begin_point(vm())  # chunks stored, never committed, no cleanup ran
    w = crashed.disk_writer(len(disk))
    for s in range(2):
        w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
    crashed._lock.release()
    two_hours_ago = time.time() - 7200
    for name in chunk_files(repo.root):
        os.utime(repo.root / chunk_key(bytes.fromhex(name)), (two_hours_ago, two_hours_ago))

    with _other_host(repo, tmp_path).begin_point(vm()) as pw:
        w = pw.disk_writer(len(disk))
        for s in range(2):
            w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
        index = w.finish()
        assert index.stats is not None and index.stats.dedup_chunks == 2
        pw._lock.release()  # say its lock went stale (paused for long): the grace must hold
        prune(repo, lambda _v, _p: KeepLast(1))  # default grace: 1 hour
        p = pw.commit(disks=[DiskRecord.for_index("d", index)], started_at=datetime.now(UTC))
    assert verify(repo, read_data=True).ok
    assert read_back(repo, p, "d") == disk


def test_a_restore_in_progress_keeps_its_chunks_while_prune_deletes_its_point(
    repo: Repository,
) -> None:
    disk = make_disk(4 * CHUNK, 11)
    p = write_point(repo, vm(), {"d": disk})
    stream = repo.read_disk(p, "d", threads=1)
    out = bytearray(next(stream)[1] or b"")
    result = prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0), lock_timeout=0.2)
    assert result.deleted_points == [p] and result.sweep_deferred
    for _offset, data in stream:
        out += data if data is not None else bytes(CHUNK)
    assert out == disk
    assert prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0)).chunks_deleted == 4


def test_a_reused_old_index_is_protected_by_the_grace_period_too(
    repo: Repository, tmp_path: Path
) -> None:
    """The same for an index: a crashed backup that got as far as its index leaves an
    orphan index; an identical later backup on another host reuses it by id."""
    disk = make_disk(2 * CHUNK, 4)

    def back_up(r: Repository) -> tuple[PointWriter, DiskIndex]:
        pw = r.begin_point(vm())
        w = pw.disk_writer(len(disk))
        for s in range(2):
            w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
        return pw, w.finish()

    crashed, index = back_up(repo)
    crashed._lock.release()  # crashed: no cleanup ran
    two_hours_ago = time.time() - 7200
    for path in repo.root.rglob("*"):
        if path.is_file() and {"indexes", "chunks"} & set(path.relative_to(repo.root).parts):
            os.utime(path, (two_hours_ago, two_hours_ago))

    pw, again = back_up(_other_host(repo, tmp_path))
    assert again.index_id == index.index_id
    pw._lock.release()  # say its lock went stale (paused for long): the grace must hold
    prune(repo, lambda _v, _p: KeepLast(1))  # default grace: 1 hour
    p = pw.commit(disks=[DiskRecord.for_index("d", again)], started_at=datetime.now(UTC))
    pw.close()
    assert verify(repo, read_data=True).ok
    assert read_back(repo, p, "d") == disk
