"""`vigil init` is the only way a repository is created; `vigil key` manages passphrases.
No vCenter is needed: none of these commands contacts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repository import Repository
from repository.errors import RepositoryError, WrongPassphraseError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "correct horse battery staple"


def vigil(
    cfg: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, VIGIL_T_PW="pass", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def config(tmp_path: Path, repo: str = "repo", passphrase: bool = True) -> Path:
    cfg = tmp_path / "vigil.toml"
    pp = 'passphrase_env = "VIGIL_T_PP"\n' if passphrase else ""
    cfg.write_text(
        '[vcenter]\nurl = "https://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "VIGIL_T_PW"\n'
        f'[repository]\npath = "{repo}"\n{pp}[policies]\npath = "pol"\n'
        '[state]\ndir = "state"\n'
    )
    return cfg


COMMANDS = [["list"], ["verify"], ["prune", "--dry-run"], ["backup", "vm"], ["key", "list"],
            ["catalog", "rebuild"], ["export", "p", "-o", "out"], ["restore", "p", "--to-existing"],
            ["watch"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_facing_a_missing_repository_exits_2_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "pol").mkdir()
    baseline = ROOT / "policies.example" / "90-baseline.toml"
    (tmp_path / "pol" / "base.toml").write_bytes(baseline.read_bytes())
    cfg = config(tmp_path, repo="typo/deep/repo")
    done = vigil(cfg, *command, env={"VIGIL_T_PP": SECRET})
    assert done.returncode == 2, done.stdout + done.stderr
    where = tmp_path / "typo" / "deep" / "repo"
    assert f"no repository at {where} — create it with `vigil init`" in done.stderr
    assert not (tmp_path / "typo").exists()


def test_init_creates_an_encrypted_repository_and_says_where_the_key_is(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    done = vigil(cfg, "init", env={"VIGIL_T_PP": SECRET})
    assert done.returncode == 0, done.stderr
    slot = next((tmp_path / "repo" / "keys").iterdir())
    assert str(slot) in done.stdout
    assert "lost passphrase loses the data" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    assert Repository.open(tmp_path / "repo", SECRET, tmp_path / "state").encrypted
    # A second init changes nothing and says so.
    again = vigil(cfg, "init", env={"VIGIL_T_PP": "other"})
    assert again.returncode == 2 and "already holds a vigil repository" in again.stderr
    assert list((tmp_path / "repo" / "keys").iterdir()) == [slot]


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_passphrase_is_refused(tmp_path: Path, value: str) -> None:
    done = vigil(config(tmp_path), "init", env={"VIGIL_T_PP": value})
    assert done.returncode == 2 and "empty passphrase is refused" in done.stderr
    assert not (tmp_path / "repo").exists()
    with pytest.raises(RepositoryError, match="empty passphrase"):
        Repository.init(tmp_path / "lib", passphrase=value)


def test_unencrypted_only_on_request_and_with_the_warning(tmp_path: Path) -> None:
    no_pp = config(tmp_path, passphrase=False)
    refused = vigil(no_pp, "init")
    assert refused.returncode == 2 and "--encryption none" in refused.stderr
    assert not (tmp_path / "repo").exists()
    done = vigil(no_pp, "init", "--encryption", "none")
    assert done.returncode == 0, done.stderr
    assert "not encrypted" in done.stderr and "forge" in done.stderr
    assert not Repository.open(tmp_path / "repo", None, tmp_path / "state").encrypted


def test_key_add_list_remove_passwd(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert vigil(cfg, "init", env={"VIGIL_T_PP": SECRET}).returncode == 0
    (tmp_path / "second").write_text("second passphrase\n")
    added = vigil(cfg, "key", "add", "--file", str(tmp_path / "second"), env={"VIGIL_T_PP": SECRET})
    assert added.returncode == 0, added.stderr
    listed = vigil(cfg, "key", "list", "--json", env={"VIGIL_T_PP": "second passphrase"})
    assert listed.returncode == 0, listed.stderr
    lines = json.loads(listed.stdout)["lines"]
    assert len([ln for ln in lines if "argon2id" in ln]) == 2
    current = next(ln.split()[1] for ln in lines if ln.startswith("*"))
    other = next(ln.split()[0] for ln in lines if ln.startswith(" ") and "argon2id" in ln)
    # The slot in use cannot be removed; the other one can, and its passphrase stops working.
    mine = vigil(cfg, "key", "remove", current, env={"VIGIL_T_PP": "second passphrase"})
    assert mine.returncode == 2 and "key passwd" in mine.stderr
    gone = vigil(cfg, "key", "remove", other, env={"VIGIL_T_PP": "second passphrase"})
    assert gone.returncode == 0, gone.stderr
    with pytest.raises(WrongPassphraseError):
        Repository.open(tmp_path / "repo", SECRET, tmp_path / "state")
    empty = vigil(cfg, "key", "passwd", env={"VIGIL_T_PP": "second passphrase",
                                              "VIGIL_NEW_PASSPHRASE": ""})  # fmt: skip
    assert empty.returncode != 0 and "empty new passphrase" in empty.stderr
    changed = vigil(cfg, "key", "passwd", env={"VIGIL_T_PP": "second passphrase",
                                                "VIGIL_NEW_PASSPHRASE": "third one"})  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert Repository.open(tmp_path / "repo", "third one", tmp_path / "state").encrypted
    with pytest.raises(WrongPassphraseError):
        Repository.open(tmp_path / "repo", "second passphrase", tmp_path / "state")
