"""Start-up cost users feel on every command: `vigil --help` and `vigil COMMAND --help` import
none of the heavy packages (aiohttp, pyVmomi, the repository, dissect, the cluster queue),
and `vigil backup` never imports the file-level restore or cluster stacks. Checked in a fresh
interpreter (sys.modules after the command), not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Never needed to print help: each costs 50-900 ms of imports.
HEAVY = ("aiohttp", "pyVmomi", "dissect", "procrastinate", "psycopg", "sqlalchemy", "repository")
# Never needed by a backup (file-level restore, the cluster's queue and database).
NOT_FOR_BACKUP = ("dissect", "procrastinate", "psycopg", "explorer.point", "protector.daemon")

PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = ["vigil", *json.loads(sys.argv[1])]
code = None
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        runpy.run_module("protector.cli", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded_by(*argv: str, env: dict[str, str] | None = None) -> tuple[object, set[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
    )
    rec = json.loads(out.stdout)
    return rec["code"], set(rec["modules"])


def roots(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("backup", "--help"),
        ("restore", "--help"),
        ("files", "--help"),
        ("inventory", "--help"),
        ("watch", "--help"),
    ],
)
def test_help_imports_nothing_heavy(argv: tuple[str, ...]) -> None:
    code, modules = loaded_by(*argv)
    assert code == 0
    assert roots(modules, HEAVY) == []


def test_config_chunk_size_default_is_the_repository_default() -> None:
    """protector.repoconfig writes the default out rather than import the repository."""
    from protector.repoconfig import RepositoryConfig
    from repository.config import DEFAULT_CHUNK_SIZE

    assert RepositoryConfig().chunk_size == DEFAULT_CHUNK_SIZE


def test_backup_does_not_import_restore_or_cluster_stacks(tmp_path: Path) -> None:
    """A backup that fails at the vCenter login (nothing listens on the port) has gone
    through the command's imports: none of the file-level restore or cluster packages."""
    (tmp_path / "policies").mkdir()
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[vcenter]\nurl = "https://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "VIGIL_T_PW"\n'
        f'[repository]\npath = "{tmp_path / "repo"}"\n'
        f'[policies]\npath = "{tmp_path / "policies"}"\n'
    )
    code, modules = loaded_by("--config", str(cfg), "backup", "vm-1", env={"VIGIL_T_PW": "x"})
    assert code == 2  # could not reach vCenter
    assert "aiohttp" in modules  # it did get as far as talking to vCenter
    assert roots(modules, NOT_FOR_BACKUP) == []
    # VixDiskLib's cffi declarations load when a disk is opened through VDDK, not because
    # protector.config imports disk_io.vddk.thumbprint (~0.19 s of start-up otherwise).
    assert "disk_io.vddk.thumbprint" in modules
    assert roots(modules, ("disk_io.vddk.disk", "disk_io.vddk.abi", "disk_io.vddk.library")) == []


def test_repository_commands_do_not_load_the_vsphere_stack(tmp_path: Path) -> None:
    """Loading the configuration checks each vCenter url (watcher.endpoint) without
    importing the SOAP and HTTP stack (aiohttp, pyVmomi: ~0.3 s), so a command that only
    reads the repository (`vigil list`, `stats`, `verify`, `prune --dry-run`) never pays for
    it, and `vigil backup` starts its key derivation before that import."""
    (tmp_path / "policies").mkdir()
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[vcenter]\nurl = "https://vc.example.com/sdk"\nuser = "u"\n'
        'password_env = "VIGIL_T_PW"\nthumbprint = "' + "ab" * 32 + '"\n'
        f'[repository]\npath = "{tmp_path / "repo"}"\n'
        f'[policies]\npath = "{tmp_path / "policies"}"\n'
    )
    code, modules = loaded_by("--config", str(cfg), "list", env={"VIGIL_T_PW": "x"})
    assert code == 2  # no repository there yet: the configuration was loaded, then refused
    assert "protector.config" in modules and "watcher.endpoint" in modules
    assert roots(modules, ("aiohttp", "pyVmomi", "watcher.soap", "watcher.pinning")) == []


VIGIL = [sys.executable, "-m", "protector.cli"]
DEBUG = ["--log-level", "debug", "--log-json"]
BACKUP_PHASES = [
    "startup",
    "login",
    "repository_open",
    "lookup",
    "prepare",
    "snapshot",
    "read",
    "snapshot_removal",
    "commit",
    "record",
    "exit",
]


def test_debug_log_times_each_phase_of_a_backup(tmp_path: Path, vcsim_fresh: object) -> None:
    """`--log-level debug` says where a backup's time went: one `phase` line per phase
    (protector/phases.py), and the backup itself still succeeds and prints its point."""
    (tmp_path / "pol").mkdir()
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{vcsim_fresh.url}"\nuser = "user"\n'  # type: ignore[attr-defined]
        'password_env = "VIGIL_T_PW"\n[repository]\npath = "repo"\n'
        'passphrase_env = "VIGIL_T_PP"\n'
        '[policies]\npath = "pol"\n[transport]\nmodes = ["http"]\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIGIL_T_PW": "pass", "VIGIL_T_PP": "pp"}
    # An encrypted repository, so repository_open includes the key derivation.
    init = subprocess.run(
        [*VIGIL, "--config", str(cfg), "init"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert init.returncode == 0, init.stderr
    out = subprocess.run(
        [*VIGIL, "--config", str(cfg), *DEBUG, "backup", "DC0_H0_VM0", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["status"] == "committed"
    lines = [json.loads(ln) for ln in out.stderr.splitlines() if ln.startswith("{")]
    timed = [(r["phase"], r["seconds"]) for r in lines if r.get("event") == "phase"]
    assert sorted(p for p, _ in timed) == sorted(BACKUP_PHASES)
    assert all(isinstance(s, float | int) and s >= 0 for _, s in timed)
    # The workflow's phases carry the job's context (which VM, which job).
    snap = next(r for r in lines if r.get("phase") == "snapshot")
    assert snap["vm"] == "DC0_H0_VM0" and snap["job"]
