"""One damaged manifest or index must not stop backups or prune: it is skipped with a
warning naming it, its chunks are never swept, and verify still reports it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from repo_helpers import CHUNK, chunk_files, make_disk, read_back, vm, write_point
from structlog.testing import capture_logs

from repository import KeepLast, Repository, prune, verify
from repository.repo import index_key


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _history(repo: Repository) -> tuple[list[str], list[bytearray]]:
    disks = [make_disk(4 * CHUNK, seed) for seed in range(3)]
    points = [write_point(repo, vm(1), {"d": d}) for d in disks]
    return points, disks


def test_backup_after_a_damaged_newest_manifest_uses_the_last_readable_point(
    repo: Repository,
) -> None:
    (p1, p2, p3), disks = _history(repo)
    _flip(repo.root / "manifests" / p3)
    with capture_logs() as logs, repo.begin_point(vm(1)) as pw:
        assert pw.previous is not None and pw.previous.point_id == p2
        base = pw.previous_index("d")
        assert base == repo.disk_index(p2, "d")[1]
    warned = [e for e in logs if e["event"] == "repository.manifest_unreadable"]
    assert warned and warned[0]["object"] == f"manifests/{p3}"

    changed = bytearray(disks[1])
    changed[:5] = b"hello"
    p4 = write_point(repo, vm(1), {"d": changed}, changed={"d": {0}})
    assert read_back(repo, p4, "d") == changed
    # The sequence never goes back: the unreadable head still counts.
    assert repo.load_manifest(p4).seq == 4
    report = verify(repo, read_data=True)
    assert report.exit_code == 1
    assert [b.key for b in report.bad_manifests] == [f"manifests/{p3}"]
    assert read_back(repo, p1, "d") == disks[0]


def test_an_unreadable_base_index_falls_back_to_a_full_backup(repo: Repository) -> None:
    (_p1, _p2, p3), disks = _history(repo)
    _flip(repo.root / index_key(repo.load_manifest(p3).disks[0].index_id))
    with repo.begin_point(vm(1)) as pw:
        assert pw.previous_index("d") is None
    p4 = write_point(repo, vm(1), {"d": disks[2]})
    assert read_back(repo, p4, "d") == disks[2]


def test_prune_skips_a_damaged_manifest_and_keeps_its_chunks(repo: Repository) -> None:
    (p1, p2, p3), disks = _history(repo)
    other = write_point(repo, vm(2), {"d": make_disk(2 * CHUNK, 9)})
    p2_chunks = {c.hex() for c in repo.disk_index(p2, "d")[1].referenced()}
    _flip(repo.root / "manifests" / p2)

    with capture_logs() as logs:
        result = prune(repo, lambda _v, _p: KeepLast(1), grace=timedelta(0))
    assert any(e.get("object") == f"manifests/{p2}" for e in logs)
    # p1 goes by retention, the damaged p2 is kept (its VM and age are unknown).
    assert result.deleted_points == [p1]
    kept = next(d for d in result.decisions if d.point_id == p2)
    assert not kept.delete and "unreadable" in kept.reason
    assert p2 in repo.list_points()
    assert chunk_files(repo.root) >= p2_chunks  # never swept while its index is unknown
    assert read_back(repo, p3, "d") == disks[2]
    assert read_back(repo, other, "d") == make_disk(2 * CHUNK, 9)

    report = verify(repo, read_data=True)
    assert report.exit_code == 1 and [b.key for b in report.bad_manifests] == [f"manifests/{p2}"]
    assert not report.bad_chunks and not report.bad_indexes


def test_prune_with_a_damaged_manifest_still_removes_crash_debris(repo: Repository) -> None:
    (_p1, p2, _p3), _ = _history(repo)
    before = chunk_files(repo.root)
    pw = repo.begin_point(vm(1))  # killed before finish(): its chunk is debris
    pw.disk_writer(CHUNK).put(0, bytes(make_disk(CHUNK, 42)))
    pw._lock.release()  # the kill: no cleanup ran
    (debris,) = chunk_files(repo.root) - before
    _flip(repo.root / "manifests" / p2)
    result = prune(repo, lambda _v, _p: KeepLast(5), grace=timedelta(0))
    assert debris not in chunk_files(repo.root)
    assert result.indexes_deleted == 0  # indexes stay: one of them is the damaged point's


def test_a_damaged_tombstone_does_not_block_backups(repo: Repository) -> None:
    (p1, _p2, _p3), disks = _history(repo)
    prune(repo, lambda _v, _p: KeepLast(2), grace=timedelta(0))
    _flip(repo.root / "tombstones" / p1)
    p4 = write_point(repo, vm(1), {"d": disks[0]})
    assert repo.load_manifest(p4).seq == 4
    report = verify(repo)
    assert report.exit_code == 1
    assert f"tombstones/{p1}" in [b.key for b in report.bad_manifests]
