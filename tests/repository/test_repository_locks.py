"""Repository lock objects: two processes acting as two hosts (separate state
directories, so no flock or local file is shared) on one repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from repo_helpers import CHUNK, PASSPHRASE, ROOT, make_disk, read_back, vm, write_point

from repository import KeepLast, Repository, RepositoryBusyError, prune, verify

CHILD = Path(__file__).with_name("two_host_writer.py")


def test_prune_on_one_host_cannot_sweep_chunks_an_incremental_on_another_reuses(
    repo: Repository, tmp_path: Path
) -> None:
    base_disk = make_disk(6 * CHUNK, 1)
    base = write_point(repo, vm(), {"d": base_disk})
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(repo.root), PASSPHRASE, str(tmp_path / "host-b")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().split() == ["reusing", base]
    # Host A (this process) deletes the base point; its sweep must not remove the chunks
    # host B's incremental references without having read or touched them.
    result = prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0), lock_timeout=1)
    assert result.deleted_points == [base]
    assert result.sweep_deferred and "backup of vm1" in result.sweep_deferred
    assert result.chunks_deleted == 0
    child.stdin.write("go\n")
    child.stdin.flush()
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    point = out.split()[-1]
    assert verify(repo, read_data=True).ok
    want = bytearray(base_disk)
    want[:CHUNK] = b"\x07" * CHUNK
    assert read_back(repo, point, "d") == want
    # With host B done, the next sweep runs and removes only what nobody references.
    again = prune(repo, lambda _v, _p: KeepLast(1), grace=timedelta(0), lock_timeout=1)
    assert again.sweep_deferred is None and again.chunks_deleted == 1
    assert verify(repo, read_data=True).ok


def test_a_sweep_excludes_new_writers_until_it_is_done(repo: Repository, tmp_path: Path) -> None:
    write_point(repo, vm(), {"d": make_disk(CHUNK, 2)})
    other = Repository.open(repo.root, PASSPHRASE, tmp_path / "host-b")
    with repo.lock(exclusive=True, purpose="prune sweep"):
        with pytest.raises(RepositoryBusyError, match=r"exclusive lock .*prune sweep"):
            other.begin_point(vm(), lock_timeout=0.3)
    other.begin_point(vm(), lock_timeout=0.3).close()


def test_stale_locks_are_ignored(repo: Repository, tmp_path: Path) -> None:
    """A host that died holding a lock blocks nothing once the lock is stale; a dead
    process of this host blocks nothing at all."""
    other = Repository.open(repo.root, PASSPHRASE, tmp_path / "host-b")
    other.lock_timing = {"refresh_every": 3600}
    held = other.lock(purpose="backup that dies")
    assert held.key is not None
    with pytest.raises(RepositoryBusyError, match="backup that dies"):
        repo.lock(exclusive=True, timeout=0.2)
    dead = json.loads((repo.root / held.key).read_bytes())
    old = time.time() - 3600  # older than the 30 minutes a lock stays valid unrefreshed
    os.utime(repo.root / held.key, (old, old))
    repo.lock(exclusive=True, timeout=0.2).release()
    assert not (repo.root / held.key).exists()  # the stale object is removed, not piled up

    # This host: a lock object whose process is gone (kill -9) is stale at once.
    dead |= {"host_id": repo.state.host_id(), "pid": 999999, "pid_start": "1"}
    (repo.root / held.key).write_text(json.dumps(dead))
    repo.lock(exclusive=True, timeout=0.2).release()
    assert not (repo.root / held.key).exists()


def test_a_lock_is_refreshed_by_a_new_object_and_released(repo: Repository) -> None:
    repo.lock_timing = {"refresh_every": 0.1}
    lock = repo.lock(purpose="long backup")
    first = lock.key
    # The refresher writes the new object, then deletes the old one: wait for both steps
    # rather than reading between them (the race tests/repository/test_s3_repolock.py hit).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (lock.key == first or (repo.root / str(first)).exists()):
        time.sleep(0.05)
    assert lock.key != first and not (repo.root / str(first)).exists()
    lock.release()
    assert list((repo.root / "locks").iterdir()) == []
