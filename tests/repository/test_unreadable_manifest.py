"""A manifest vigil cannot read (a permission error: the object belongs to another user)
is reported and skipped like a damaged one; it must not stop prune, backups of other VMs
or verify (the daemon used to fail its start and prune in a restart loop)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import CHUNK, PASSPHRASE, make_disk, new_repo, vm, write_point

from repository import KeepLast, Repository, prune, verify

NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="vigil-unreadable-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def as_nobody(fn: Callable[[], Any]) -> Any:
    """Run fn in a forked child with the uid of `nobody`: root would read any file."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = json.dumps({"ok": fn()})
        except BaseException as exc:
            out = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "error" not in data, data["error"]
    return data["ok"]


def test_an_unreadable_manifest_is_reported_and_skipped(shared_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the repository to another user")
    repo = new_repo(shared_tmp / "repo")
    locked_out = write_point(repo, vm(1), {"d": make_disk(CHUNK, 1)})
    for seed in range(2, 4):
        write_point(repo, vm(2), {"d": make_disk(CHUNK, seed)})
    state = shared_tmp / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    for path in [repo.root, *repo.root.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    os.chown(repo.root / "manifests" / locked_out, 0, 0)  # 0600 root's: EACCES for nobody

    def run() -> dict[str, Any]:
        r = Repository.open(repo.root, PASSPHRASE, state)
        good, bad = r.scan_manifests()
        result = prune(r, lambda _v, _p: KeepLast(1), grace=timedelta(0))
        p = write_point(r, vm(2), {"d": make_disk(CHUNK, 9)})  # another VM backs up fine
        report = verify(r)
        return {
            "good": len(good),
            "bad": [(b.key, b.reason) for b in bad],
            "deleted": result.deleted_points,
            "limited": result.sweep_limited,
            "new": p,
            "verify": report.lines(),
        }

    got = as_nobody(run)
    assert got["good"] == 2
    [(key, reason)] = got["bad"]
    assert key == f"manifests/{locked_out}" and "Permission denied" in reason
    assert len(got["deleted"]) == 1 and got["limited"]  # kept every index: safe
    assert any(f"BAD manifest manifests/{locked_out}" in ln for ln in got["verify"])
    assert (repo.root / "manifests" / locked_out).exists()
