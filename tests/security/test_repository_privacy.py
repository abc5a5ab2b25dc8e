"""The repository holds every VM's disk data: its files are 0600 and its directories
0700 whatever the umask, the master key is on disk only wrapped, and key slots use
Argon2id with sane costs (and a slot cannot make vigil burn unbounded memory or time)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from repository import KdfParams, Repository
from repository.keys import keyset_from_master, unwrap_master

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "passphrase-for-privacy-test"


def vigil(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VIGIL_SEC_PW="pass", VIGIL_SEC_PP=PASSPHRASE)
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=lambda: os.umask(0),  # the most careless umask there is
    )


@pytest.fixture
def backed_up(tmp_path: Path, vcsim_fresh) -> Path:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{vcsim_fresh.url}"\nuser = "user"\npassword_env = "VIGIL_SEC_PW"\n'
        '[repository]\npath = "repo"\npassphrase_env = "VIGIL_SEC_PP"\n'
        '[policies]\npath = "pol"\n[transport]\nmodes = ["http"]\n[state]\ndir = "state"\n'
    )
    init = vigil(cfg, "init")
    assert init.returncode == 0, init.stderr
    # Real data, so chunks are written too.
    flat = next(d for d in vcsim_fresh.datastore_dirs if (d / "DC0_H0_VM0").is_dir())
    (flat / "DC0_H0_VM0" / "disk1-flat.vmdk").write_bytes(os.urandom(1 << 20))
    for args in (("backup", "DC0_H0_VM0"), ("backup", "DC0_H0_VM0", "--full"), ("verify",)):
        done = vigil(cfg, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / "repo"


def test_repository_is_private_even_with_umask_000(backed_up: Path) -> None:
    loose: list[str] = []
    state = backed_up.parent / "state"  # [state] dir: this machine's locks and heads
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for dirpath, dirnames, filenames in [*os.walk(backed_up), *os.walk(state)]:
        for name in dirnames:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode)
            if mode != 0o700:
                loose.append(f"{dirpath}/{name}/ {mode:o}")
        for name in filenames:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode)
            if mode != 0o600:
                loose.append(f"{dirpath}/{name} {mode:o}")
    assert stat.S_IMODE(os.stat(backed_up).st_mode) == 0o700
    assert not loose, f"readable by others: {loose}"
    assert list((backed_up / "chunks").rglob("*")) and list(state.rglob("heads/*.json"))
    # Nothing local to this machine is in the repository (it may be shared storage).
    assert not (backed_up / "catalog.db").exists()
    # locks/ holds only repository lock objects, and none once the commands are done.
    assert not list((backed_up / "locks").iterdir())


def test_master_key_is_never_on_disk_unwrapped(backed_up: Path) -> None:
    repo = Repository.open(backed_up, PASSPHRASE)
    slot = next((backed_up / "keys").iterdir())
    got = unwrap_master(slot.read_bytes(), PASSPHRASE, repo.config.repo_id, slot.name)
    assert got is not None
    keys = keyset_from_master(got.master)
    secrets = [got.master, keys.id_key, keys.mac_key, keys.enc_key]
    forms = [f for k in secrets if k for f in (k, k.hex().encode(), k.hex().upper().encode())]
    for path in backed_up.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(f in data for f in forms), f"{path} holds key material in the clear"


def test_key_slots_use_argon2id_with_sane_costs(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", passphrase=PASSPHRASE)
    slot = json.loads(next((tmp_path / "r" / "keys").iterdir()).read_bytes())
    assert slot["kdf"] == "argon2id" and slot["cipher"] == "aes-256-gcm"
    # RFC 9106's second recommended option: t=3, 64 MiB.
    assert slot["memory_kib"] >= 64 * 1024 and slot["time_cost"] >= 3
    assert len(bytes.fromhex(slot["salt"])) >= 16
    assert KdfParams().memory_kib >= 64 * 1024


@pytest.mark.parametrize(
    "field,value",
    [("memory_kib", 1 << 31), ("time_cost", 1 << 30), ("parallelism", 1 << 20), ("kdf", "md5")],
)
def test_a_tampered_slot_cannot_exhaust_memory_or_time(tmp_path: Path, field, value) -> None:
    """Slot parameters are read from the repository; an edited slot must be refused
    promptly, not make every `vigil` run hang or be killed for memory."""
    Repository.init(tmp_path / "r", passphrase=PASSPHRASE, kdf=KdfParams(1, 1024, 1))
    path = next((tmp_path / "r" / "keys").iterdir())
    slot = json.loads(path.read_bytes())
    slot[field] = value
    path.write_text(json.dumps(slot))
    code = (
        "import sys\n"
        "from repository.keys import unwrap_master\n"
        "from pathlib import Path\n"
        "p = Path(sys.argv[1])\n"
        "try:\n"
        "    unwrap_master(p.read_bytes(), 'x', 'id', p.name)\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a slot with {field}={value} kept vigil busy for 20 s")
    assert done.stdout.startswith("refused:"), done.stdout + done.stderr
    assert path.name in done.stdout and field in done.stdout
