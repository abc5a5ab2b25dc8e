"""A repository on read-only storage (a snapshot, a replica, a remount after errors):
verify, prune --dry-run, catalog rebuild and restore reads work; nothing crashes on a lock
or the catalog."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from repo_helpers import CHUNK, PASSPHRASE, ROOT, make_disk, new_repo, read_back, vm, write_point

from repository import KeepLast, Repository, prune
from repository.cli import verify_cmd
from repository.errors import BackendError


@pytest.fixture
def ro_mount(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount_ro(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def test_read_only_repository_verify_dry_run_rebuild_and_read(
    ro_mount: Path, tmp_path: Path
) -> None:
    repo = new_repo(ro_mount / "repo")
    disks = [make_disk(2 * CHUNK, s) for s in range(3)]
    points = [write_point(repo, vm(), {"d": d}) for d in disks]
    _remount_ro(ro_mount)
    state = tmp_path / "state-elsewhere"  # this machine's state is writable, as usual
    ro = Repository.open(repo.root, PASSPHRASE, state)

    out = verify_cmd(repo.root, PASSPHRASE, read_data=True)
    assert out.exit_code == 0, out.lines
    result = prune(ro, lambda _v, _p: KeepLast(1), dry_run=True, grace=timedelta(0))
    assert len(result.deleted_points) == 2 and result.sweep_deferred is None
    live, pruned = asyncio.run(ro.state.rebuild(ro))
    assert (live, pruned) == (3, 0)
    assert read_back(ro, points[0], "d") == disks[0]
    assert ro.export_raw(points[1], "d", tmp_path / "out.raw") > 0

    # The real prune cannot run there: it says why instead of crashing.
    with pytest.raises(BackendError, match="read-only"):
        prune(ro, lambda _v, _p: KeepLast(1), grace=timedelta(0))


def test_read_only_repository_through_the_cli(ro_mount: Path, tmp_path: Path) -> None:
    repo = new_repo(ro_mount / "repo")
    write_point(repo, vm(), {"d": make_disk(CHUNK, 1)})
    _remount_ro(ro_mount)
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[vcenter]\nurl = "https://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "VIGIL_T_PW"\n'
        f'[repository]\npath = "{repo.root}"\npassphrase_env = "VIGIL_T_PP"\n'
        '[policies]\npath = "pol"\n[state]\ndir = "state"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), VIGIL_T_PW="x", VIGIL_T_PP=PASSPHRASE)
    for args in (["verify", "--read-data"], ["catalog", "rebuild"]):
        done = subprocess.run(
            [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
