"""Someone with write access to the backup storage plants symbolic links or odd files:
vigil (running as root) must never follow them out of the repository, and prune deletes
only objects of the format's exact shapes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from repo_helpers import CHUNK, PASSPHRASE, ROOT, make_disk, vm, write_point

from repository import KeepLast, Repository, prune, verify
from repository.errors import BackendError, RepositoryError


def _victim(tmp_path: Path) -> Path:
    """A directory elsewhere on the host that looks like a chunk tree."""
    victim = tmp_path / "victim"
    (victim / "ab").mkdir(parents=True)
    (victim / "ab" / ("ab" + "0" * 62)).write_text("precious")
    (victim / "notes.txt").write_text("precious")
    old = 1_000_000_000  # older than any grace period
    for p in [*victim.rglob("*")]:
        os.utime(p, (old, old))
    return victim


def test_prune_does_not_follow_a_chunks_symlink_out_of_the_repository(
    repo: Repository, tmp_path: Path
) -> None:
    write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 1)})
    victim = _victim(tmp_path)
    real = repo.root / "chunks"
    real.rename(repo.root / "chunks.moved")
    real.symlink_to(victim)
    with pytest.raises(BackendError, match=r"chunks/.*symbolic link"):
        prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0))
    assert sorted(p.name for p in victim.rglob("*")) == ["ab", "ab" + "0" * 62, "notes.txt"]
    # The chunks are unreachable through the link: verify reports damage, not OK.
    assert not verify(repo).ok


def test_a_symlinked_chunk_or_manifest_is_never_read_through(
    repo: Repository, tmp_path: Path
) -> None:
    p = write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 2)})
    secret = tmp_path / "secret"
    secret.write_bytes(b"root-only data")
    manifest = repo.root / "manifests" / p
    manifest.unlink()
    manifest.symlink_to(secret)
    report = verify(repo)
    assert not report.ok
    bad = {b.key: b.reason for b in report.bad_manifests}
    assert f"manifests/{p}" in bad and "symbolic link" in bad[f"manifests/{p}"]


def test_prune_deletes_only_objects_of_the_exact_shapes(repo: Repository) -> None:
    write_point(repo, vm(), {"d": make_disk(2 * CHUNK, 3)})
    odd = [
        repo.root / "chunks" / "zz" / "important.txt",
        repo.root / "chunks" / "README",
        repo.root / "indexes" / "not-an-index",
    ]
    for f in odd:
        f.parent.mkdir(exist_ok=True)
        f.write_text("keep me")
        os.utime(f, (1_000_000_000, 1_000_000_000))
    prune(repo, lambda _v, _p: KeepLast(0), grace=timedelta(0))
    assert all(f.read_text() == "keep me" for f in odd)
    with pytest.raises(ValueError, match="not a repository object"):
        repo.backend.delete("chunks/zz/important.txt")


def test_planted_links_at_local_files_are_not_truncated_or_chmodded(
    repo: Repository, tmp_path: Path
) -> None:
    """catalog.db and locks/ used to live in the repository: links planted there must not
    make vigil chmod or truncate their targets (they live in the state directory now)."""
    target = tmp_path / "passwd-like"
    target.write_text("root:x:0:0\n")
    target.chmod(0o644)
    (repo.root / "catalog.db").symlink_to(target)
    locks = tmp_path / "etc-like"
    locks.mkdir()
    (locks / "repository.lock").write_text("keep")
    (locks / "repository.lock").chmod(0o644)
    (repo.root / "locks").symlink_to(locks, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), VIGIL_TEST_PP=PASSPHRASE)
    script = (
        "import sys, asyncio\n"
        "from repository.cli import catalog_rebuild_cmd, verify_cmd\n"
        "print(asyncio.run(catalog_rebuild_cmd(sys.argv[1], sys.argv[2])).exit_code)\n"
        "print(verify_cmd(sys.argv[1], sys.argv[2]).exit_code)\n"
    )
    with pytest.raises(BackendError, match=r"locks/.*symbolic link"):
        write_point(repo, vm(), {"d": make_disk(CHUNK, 4)})  # lock objects: not through it
    done = subprocess.run(
        [sys.executable, "-c", script, str(repo.root), PASSPHRASE],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with pytest.raises(BackendError, match=r"locks/.*symbolic link"):
        prune(repo, lambda _v, _p: KeepLast(1), grace=timedelta(0))
    assert target.read_text() == "root:x:0:0\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert (locks / "repository.lock").read_text() == "keep"
    assert stat.S_IMODE((locks / "repository.lock").stat().st_mode) == 0o644
    assert sorted(p.name for p in locks.iterdir()) == ["repository.lock"]


def test_a_symlinked_state_directory_is_refused(repo: Repository, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = tmp_path / "state-link"
    state.symlink_to(elsewhere, target_is_directory=True)
    other = Repository.open(repo.root, PASSPHRASE, state_dir=state)
    with pytest.raises(RepositoryError, match="symbolic link"):
        other.state.ensure()
    assert list(elsewhere.iterdir()) == []
