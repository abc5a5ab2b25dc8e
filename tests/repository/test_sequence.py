"""Per-VM sequence numbers only go up, even after the newest point was deleted: the
manifest chain and rollback detection depend on it."""

from __future__ import annotations

from datetime import timedelta

from repo_helpers import CHUNK, make_disk, vm, write_point

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
