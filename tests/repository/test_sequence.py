"""Per-VM sequence numbers only go up, even after the newest point was deleted: the
manifest chain and rollback detection depend on it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from repo_helpers import CHUNK, PASSPHRASE, make_disk, vm, write_point

from repository import KeepLast, Repository, prune, verify


def test_delete_head_then_commit_gets_a_higher_seq(repo: Repository) -> None:
    p1 = write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    p2 = write_point(repo, vm(), {"d": make_disk(CHUNK, 2)})
    repo.delete_point(repo.load_manifest(p2), "operator request")
    p3 = write_point(repo, vm(), {"d": make_disk(CHUNK, 3)})
    assert p3 != p2 and repo.load_manifest(p3).seq == 3
    assert repo.load_manifest(p3).prev_point_id == p2
    assert verify(repo, known_heads={vm().key: 3}).ok
    assert repo.list_points() == [p1, p3]


def test_prune_of_every_point_then_commit_continues_the_sequence(repo: Repository) -> None:
    for seed in range(3):
        write_point(repo, vm(), {"d": make_disk(CHUNK, seed)})
    result = prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0))
    assert len(result.deleted_points) == 3 and repo.list_points() == []
    p4 = write_point(repo, vm(), {"d": make_disk(CHUNK, 4)})
    assert repo.load_manifest(p4).seq == 4
    assert verify(repo, read_data=True).ok


def test_a_missing_head_tombstone_object_still_counts_by_name(repo: Repository) -> None:
    """A tombstone that cannot be read still holds its seq in its name."""
    write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    p2 = write_point(repo, vm(), {"d": make_disk(CHUNK, 2)})
    repo.delete_point(repo.load_manifest(p2), "test")
    (repo.root / "tombstones" / p2).write_bytes(b"garbage")
    p3 = write_point(repo, vm(), {"d": make_disk(CHUNK, 3)})
    assert repo.load_manifest(p3).seq == 3


def _rm_manifest(repo: Repository, point: str) -> None:
    (repo.root / "manifests" / point).unlink()  # someone deletes the file, no tombstone


def test_a_deleted_newest_manifest_is_not_reused_and_verify_names_the_gap(
    repo: Repository,
) -> None:
    """The issue's case: the newest point's manifest is removed behind vigil's back; the
    next backup must not take its seq and chain to the older point (verify would say OK)."""
    write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    p2 = write_point(repo, vm(), {"d": make_disk(CHUNK, 2)})
    _rm_manifest(repo, p2)
    p3 = write_point(repo, vm(), {"d": make_disk(CHUNK, 3)})
    m3 = repo.load_manifest(p3)
    assert m3.seq == 3 and m3.prev_point_id == p2
    report = verify(repo)  # no known_heads: the gap alone is damage
    assert not report.ok
    assert any(p2 in line and "missing" in line for line in report.chain_problems)


def test_the_high_water_mark_survives_without_local_state(repo: Repository, tmp_path: Path) -> None:
    """Another host (or this one after losing its state directory) sees the repository's
    per-VM head objects: deleting a manifest cannot lower them either."""
    write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    p2 = write_point(repo, vm(), {"d": make_disk(CHUNK, 2)})
    _rm_manifest(repo, p2)
    fresh = Repository.open(repo.root, PASSPHRASE, tmp_path / "new-state")
    p3 = write_point(fresh, vm(), {"d": make_disk(CHUNK, 3)})
    assert fresh.load_manifest(p3).seq == 3
    assert any(p2 in line for line in verify(fresh).chain_problems)


def test_prune_keeps_only_the_newest_head_object_per_vm(repo: Repository) -> None:
    for seed in range(3):
        write_point(repo, vm(), {"d": make_disk(CHUNK, seed)})
    write_point(repo, vm(2), {"d": make_disk(CHUNK, 9)})
    prune(repo, lambda _v, _p: KeepLast(1), grace=timedelta(0))
    heads = sorted(p.name for p in (repo.root / "heads").iterdir())
    assert [h.rsplit("-", 1)[1] for h in heads] == ["000001", "000003"] or [
        h.rsplit("-", 1)[1] for h in heads
    ] == ["000003", "000001"]
    assert len(heads) == 2
