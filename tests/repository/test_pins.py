"""Pins (pins/<point id>, object type 6): a pinned point cannot be deleted, prune keeps it
and says why, and pins are objects of the format's exact shapes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from repo_helpers import CHUNK, make_disk, vm, write_point

from repository import KeepLast, Repository, prune
from repository.codec import ObjectType
from repository.errors import PointNotFoundError, PointPinnedError


def test_a_pinned_point_refuses_delete_until_unpinned(repo: Repository) -> None:
    p1 = write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    assert repo.pin(p1, "legal hold") is True
    assert repo.pin(p1) is False  # already pinned: the first note stays
    assert repo.pin_note(p1) == "legal hold"
    assert repo.pinned_points() == {p1}
    with pytest.raises(PointPinnedError, match=p1):
        repo.delete_point(repo.load_manifest(p1), "operator request")
    assert repo.list_points() == [p1]
    assert not list(repo.backend.list("tombstones/"))
    assert repo.unpin(p1) is True and repo.unpin(p1) is False
    assert repo.pin_note(p1) is None
    repo.delete_point(repo.load_manifest(p1), "operator request")
    assert repo.list_points() == []


def test_pinning_a_missing_point_is_refused(repo: Repository) -> None:
    with pytest.raises(PointNotFoundError):
        repo.pin("0123456789abcdef-20260101T000000Z-000001")
    assert repo.pinned_points() == set()


def test_prune_keeps_a_pinned_point_and_names_the_pin(repo: Repository) -> None:
    p1 = write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    p2 = write_point(repo, vm(), {"d": make_disk(CHUNK, 2)})
    repo.pin(p1)
    result = prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0))
    assert result.deleted_points == [p2]
    assert repo.list_points() == [p1]
    kept = {d.point_id: d.reason for d in result.decisions if not d.delete}
    assert "pinned" in kept[p1]


def test_a_pin_is_a_sealed_type_6_object_and_a_stray_name_is_not_a_pin(
    repo: Repository,
) -> None:
    p1 = write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    repo.pin(p1)
    blob = (repo.root / "pins" / p1).read_bytes()
    assert blob[5] == ObjectType.PIN == 6  # envelope byte 5: the object type
    (repo.root / "pins" / "notes.txt").write_text("not ours")
    assert repo.pinned_points() == {p1}
    # A damaged pin still keeps its point (the safe side), and says it is unreadable.
    (repo.root / "pins" / p1).write_bytes(b"garbage")
    assert "unreadable pin" in (repo.pin_note(p1) or "")
    with pytest.raises(PointPinnedError):
        repo.delete_point(repo.load_manifest(p1), "test")
