"""An encrypted repository through the CLI: passphrase from the environment, never argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vigil(cfg: Path, *args: str, passphrase: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VIGIL_TEST_PW="pass")
    env.pop("VIGIL_TEST_PASSPHRASE", None)
    if passphrase is not None:
        env["VIGIL_TEST_PASSPHRASE"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_encrypted_repository_backup_list_verify_and_wrong_passphrase(tmp_path, vcsim_fresh):
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{vcsim_fresh.url}"\nuser = "user"\npassword_env = "VIGIL_TEST_PW"\n'
        '[repository]\npath = "repo"\npassphrase_env = "VIGIL_TEST_PASSPHRASE"\n'
        '[policies]\npath = "pol"\n[transport]\nmodes = ["http"]\n'
    )
    secret = "correct horse battery staple"
    assert vigil(cfg, "init", passphrase=secret).returncode == 0
    b = vigil(cfg, "backup", "DC0_H0_VM0", "--json", passphrase=secret)
    assert b.returncode == 0, b.stderr
    point = json.loads(b.stdout)["id"]
    assert secret not in b.stdout + b.stderr

    # Manifests are sealed: the VM's name is not readable without the key.
    manifests = list((tmp_path / "repo" / "manifests").iterdir())
    assert manifests and all(b"DC0_H0_VM0" not in m.read_bytes() for m in manifests)

    listed = vigil(cfg, "list", "--json", passphrase=secret)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["id"] == point
    v = vigil(cfg, "verify", "--read-data", passphrase=secret)
    assert v.returncode == 0, v.stdout + v.stderr

    wrong = vigil(cfg, "list", passphrase="not it")
    assert wrong.returncode == 2
    assert "wrong passphrase" in wrong.stderr and "repository.passphrase_env" in wrong.stderr
    missing = vigil(cfg, "list", passphrase=None)
    assert missing.returncode == 2 and "VIGIL_TEST_PASSPHRASE is not set" in missing.stderr


def test_a_replaced_cleartext_config_is_refused_not_written_in_plaintext(tmp_path, vcsim_fresh):
    """The config is cleartext: swapping in an unencrypted one must not make vigil write
    plaintext chunks or trust unkeyed manifests (an encryption downgrade)."""
    from repository import Repository

    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{vcsim_fresh.url}"\nuser = "user"\npassword_env = "VIGIL_TEST_PW"\n'
        '[repository]\npath = "repo"\npassphrase_env = "VIGIL_TEST_PASSPHRASE"\n'
        '[policies]\npath = "pol"\n[transport]\nmodes = ["http"]\n'
    )
    secret = "correct horse battery staple"
    assert vigil(cfg, "init", passphrase=secret).returncode == 0
    assert vigil(cfg, "backup", "DC0_H0_VM0", passphrase=secret).returncode == 0
    Repository.init(tmp_path / "plain", passphrase=None)
    (tmp_path / "repo" / "config").write_bytes((tmp_path / "plain" / "config").read_bytes())
    chunks_before = sorted(p.name for p in (tmp_path / "repo" / "chunks").rglob("*"))

    b = vigil(cfg, "backup", "DC0_H0_VM0", "--full", passphrase=secret)
    assert b.returncode == 2, b.stdout + b.stderr
    assert "downgrade" in b.stderr and str(tmp_path / "repo") in b.stderr
    assert "Traceback" not in b.stderr
    assert sorted(p.name for p in (tmp_path / "repo" / "chunks").rglob("*")) == chunks_before
