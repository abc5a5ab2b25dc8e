"""A one-off `vigil backup` run as root in the service user's state directory leaves a
repository and local state the service user can still use: every file and directory vigil
creates (objects, lock objects, this machine's state: heads, flock files, the job journal)
belongs to the owner of the directory it was created in, not to root. Run as root only
(the machine and CI are)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any user, unlike a venv under /root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a one-off backup as root")

POLICY = """
[[policy]]
name = "p"
priority = 10
[policy.select]
names = ["DC0_H0_VM0"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 5
"""

# Run as the service user: read every file, take every lock and create a file in every
# directory, as the daemon does.
AS_SERVICE = """
import fcntl, os, sys
for dirpath, dirnames, filenames in [w for top in sys.argv[1:] for w in os.walk(top)]:
    probe = os.path.join(dirpath, ".probe")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)
    for name in filenames:
        path = os.path.join(dirpath, name)
        if name.endswith(".lock") or name.endswith("-lock"):
            fd = os.open(path, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.close(fd)
        else:
            with open(path, "rb") as f:
                f.read()
print("ok")
"""


def free_uid() -> int:
    used = {p.pw_uid for p in pwd.getpwall()}
    return next(u for u in range(61000, 62000) if u not in used)


@pytest.fixture
def service_dir() -> Iterator[tuple[Path, int]]:
    """A state directory like /var/lib/vigil: 0700, owned by a uid that is not root's.
    Under a directory the uid can traverse (pytest's tmp_path is root-only)."""
    uid = free_uid()
    base = Path(tempfile.mkdtemp(prefix="vigil-owner-", dir="/tmp"))
    try:
        base.chmod(0o711)
        state = base / "state"
        state.mkdir(mode=0o700)
        os.chown(state, uid, uid)
        yield state, uid
    finally:
        shutil.rmtree(base)


def vigil(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT,
        env=dict(os.environ, VIGIL_TEST_PW="pass", PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=180,
    )


def not_owned_by(repo: Path, uid: int) -> list[str]:
    bad = []
    for path in [repo, *repo.rglob("*")]:
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (uid, uid):
            bad.append(f"{path.relative_to(repo)} {st.st_uid}:{st.st_gid}")
    return bad


def test_root_one_off_backup_leaves_files_the_service_user_owns(service_dir, vcsim_fresh):
    state, uid = service_dir
    cfg_dir = Path(tempfile.mkdtemp(prefix="vigil-cfg-"))
    try:
        cfg = cfg_dir / "vigil.toml"
        cfg.write_text(
            f'[vcenter]\nurl = "{vcsim_fresh.url}"\nuser = "user"\n'
            'password_env = "VIGIL_TEST_PW"\n'
            f'[repository]\npath = "{state / "repo"}"\n[policies]\npath = "pol"\n'
            '[transport]\nmodes = ["http"]\n'
            f'[state]\ndir = "{state / "local"}"\n'
        )
        (cfg_dir / "pol").mkdir()
        (cfg_dir / "pol" / "p.toml").write_text(POLICY)

        # init creates the repository, the one-offs write into it and the local state.
        for args in (["init", "--encryption", "none"], *[["backup", "DC0_H0_VM0"]] * 2):
            r = vigil(cfg, *args)
            assert r.returncode == 0, r.stderr
        repo, local = state / "repo", state / "local"
        assert (repo / "locks").is_dir() and list(local.rglob("heads/*.json"))
        for top in (repo, local):
            assert not not_owned_by(top, uid), "created as root: " + ", ".join(
                not_owned_by(top, uid)[:10]
            )
        for path in [*repo.rglob("*"), *local.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"

        # And the service user can really use it.
        res = subprocess.run(
            [SYSTEM_PYTHON, "-c", AS_SERVICE, str(repo), str(local)],
            user=uid,
            group=uid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    finally:
        shutil.rmtree(cfg_dir)
