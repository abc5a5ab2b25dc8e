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
