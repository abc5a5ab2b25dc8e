"""A full filesystem fails the backup cleanly and leaves earlier points intact."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from repo_helpers import CHUNK, make_disk, new_repo, read_back, vm, write_point

from repository import verify
from repository.errors import BackendError, RepositoryError


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_fails_cleanly_and_keeps_earlier_points(small_fs: Path) -> None:
    repo = new_repo(small_fs / "repo")
    first = make_disk(16 * CHUNK, 1)
    p1 = write_point(repo, vm(), {"d": first})
    big = os.urandom(160 * CHUNK)  # 10 MiB of incompressible data into 8 MiB

    with repo.begin_point(vm()) as pw:
        w = pw.disk_writer(len(big))
        with pytest.raises(BackendError, match=r"No space left.*filesystem is full") as err:
            for s in range(160):
                w.put(s, big[s * CHUNK : (s + 1) * CHUNK])
        assert err.value.key.startswith("chunks/")
        with pytest.raises(RepositoryError, match="failed put"):
            w.finish()  # an index with a slot that was never stored must not exist

    assert repo.list_points() == [p1]
    assert not list(repo.root.rglob(".tmp-*"))  # no half-written objects left behind
    assert read_back(repo, p1, "d") == first
    assert verify(repo, read_data=True).ok


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_failed_backup_gives_back_the_space_it_took(small_fs: Path) -> None:
    """After ENOSPC the failed run's new chunks go at once (not after prune's grace
    period), so the repository is not left full and the next, smaller backup works."""
    repo = new_repo(small_fs / "repo")
    p1 = write_point(repo, vm(), {"d": make_disk(16 * CHUNK, 1)})
    used_before = _used(small_fs)
    big = os.urandom(160 * CHUNK)  # 10 MiB of incompressible data: too big from the start

    with pytest.raises(BackendError, match="No space left") as err:
        with repo.begin_point(vm(2)) as pw:
            w = pw.disk_writer(len(big))
            for s in range(160):
                w.put(s, big[s * CHUNK : (s + 1) * CHUNK])
    assert "the objects this run wrote were removed" in str(err.value)
    assert _used(small_fs) <= used_before + 64 * 1024  # directories may stay
    assert repo.list_points() == [p1]
    p2 = write_point(repo, vm(2), {"d": make_disk(48 * CHUNK, 2)})  # 3 MiB: fits again
    assert repo.list_points() == sorted([p1, p2])
    assert verify(repo, read_data=True).ok


def test_an_abandoned_point_never_removes_a_chunk_another_point_reuses(repo) -> None:  # type: ignore[no-untyped-def]
    """The cleanup only removes what this writer stored and no point committed since
    references: a concurrent writer may have deduplicated against it."""
    disk = make_disk(4 * CHUNK, 5)
    pw = repo.begin_point(vm(1))
    w = pw.disk_writer(len(disk))
    for s in range(4):
        w.put(s, bytes(disk[s * CHUNK : (s + 1) * CHUNK]))
    w.finish()
    other = write_point(repo, vm(2), {"d": disk})  # reuses all four chunks
    pw.close()  # abandoned
    assert read_back(repo, other, "d") == disk
    assert verify(repo, read_data=True).ok
