"""repository.key_file: a host key that opens the repository without the passphrase (and
its Argon2id), beside the passphrase, which stays the way in for any other host."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from protector.logs import redact_text
from repository import ConfigTamperedError, Repository, admin
from repository.errors import HostKeyUnmatchedError, WrongPassphraseError
from repository.keys import host_key_id

ROOT = Path(__file__).resolve().parents[2]
SECRET = "correct horse battery staple"


def vigil(
    cfg: Path, *args: str, passphrase: str | None = SECRET
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_T_PP"}
    env["VIGIL_T_PW"] = "pass"
    if passphrase is not None:
        env["VIGIL_T_PP"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def config(tmp_path: Path, key_file: str | None = "host.key") -> Path:
    cfg = tmp_path / "vigil.toml"
    kf = f'key_file = "{key_file}"\n' if key_file else ""
    cfg.write_text(
        '[vcenter]\nurl = "https://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "VIGIL_T_PW"\n'
        f'[repository]\npath = "repo"\npassphrase_env = "VIGIL_T_PP"\n{kf}'
        '[policies]\npath = "pol"\n[state]\ndir = "state"\n'
    )
    return cfg


def key_rows(cfg: Path, passphrase: str | None) -> list[str]:
    listed = vigil(cfg, "key", "list", "--json", passphrase=passphrase)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["lines"]


def test_init_makes_the_host_key_and_this_host_then_needs_no_passphrase(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    done = vigil(cfg, "init")
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "host.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    text = key_file.read_text()
    assert len(text.strip()) == 64 and text.endswith("\n")
    key = bytes.fromhex(text)
    assert text.strip() not in done.stdout + done.stderr  # the key is never printed
    assert host_key_id(key) in done.stdout
    # Without any passphrase configured, this host opens the repository with its key.
    rows = key_rows(cfg, passphrase=None)
    current = [r for r in rows if r.startswith("*")]
    assert (
        len(current) == 1 and f"host key {host_key_id(key)} ({socket.gethostname()})" in current[0]
    )
    assert any("argon2id" in r for r in rows) and rows[-1] == "(* = the slot your host key opens)"
    assert vigil(cfg, "list", "--json", passphrase=None).returncode == 0
    # Both secrets open the same repository: the passphrase is the way in elsewhere.
    by_key = Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)
    by_passphrase = Repository.open(tmp_path / "repo", SECRET, tmp_path / "state")
    assert by_key.opened_by_host_key and not by_passphrase.opened_by_host_key
    assert by_key.keys == by_passphrase.keys


def test_a_key_of_another_repository_falls_back_to_the_passphrase_or_says_what_to_do(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    assert vigil(cfg, "init").returncode == 0
    key_file = tmp_path / "host.key"
    key_file.write_text(os.urandom(32).hex() + "\n")  # another host's, or a new one
    opened = vigil(cfg, "list", "--json")
    assert opened.returncode == 0, opened.stderr
    assert (
        "repository.host_key_unmatched" in opened.stderr and "vigil key add-host" in opened.stderr
    )
    stuck = vigil(cfg, "list", passphrase=None)
    assert stuck.returncode == 2
    assert "repository.key_file" in stuck.stderr and "vigil key add-host" in stuck.stderr
    # add-host opens with the passphrase once and adds a slot for the key in the file.
    added = vigil(cfg, "key", "add-host")
    assert added.returncode == 0, added.stderr
    assert vigil(cfg, "list", passphrase=None).returncode == 0
    again = vigil(cfg, "key", "add-host")
    assert again.returncode == 0 and "already opens key slot" in again.stdout
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 3  # passphrase, old, new host


def test_add_host_on_a_repository_made_without_one(tmp_path: Path) -> None:
    assert vigil(config(tmp_path, key_file=None), "init").returncode == 0
    cfg = config(tmp_path)
    missing = vigil(cfg, "list")
    assert missing.returncode == 0 and "repository.host_key_missing" in missing.stderr
    added = vigil(cfg, "key", "add-host")
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "host.key").stat().st_mode & 0o777 == 0o600
    assert vigil(cfg, "list", passphrase=None).returncode == 0
    unset = vigil(config(tmp_path, key_file=None), "key", "add-host")
    assert unset.returncode == 2 and "set repository.key_file" in unset.stderr


def test_passwd_replaces_the_passphrase_and_keeps_the_host_key(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert vigil(cfg, "init").returncode == 0
    env_new = {"VIGIL_NEW_PASSPHRASE": "a new one"}
    os.environ.update(env_new)
    try:
        changed = vigil(cfg, "key", "passwd")
    finally:
        os.environ.pop("VIGIL_NEW_PASSPHRASE")
    assert changed.returncode == 0, changed.stderr
    with pytest.raises(WrongPassphraseError):
        Repository.open(tmp_path / "repo", SECRET, tmp_path / "state")
    assert Repository.open(tmp_path / "repo", "a new one", tmp_path / "state").encrypted
    assert vigil(cfg, "list", passphrase=None).returncode == 0
    # Opened by its host key, the library refuses a passwd: it would delete the host's slot.
    key = bytes.fromhex((tmp_path / "host.key").read_text())
    repo = Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)
    with pytest.raises(Exception, match="opened with the host key"):
        repo.change_passphrase("yet another")
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 2


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        ("ab" * 32 + "\n", 0o644, "chmod 600"),
        ("not a key at all\n", 0o600, "holds 64 hex digits"),
        ("ab" * 31 + "\n", 0o600, "holds 62 characters"),
    ],
)
def test_a_bad_key_file_is_refused_by_name_without_echoing_it(
    tmp_path: Path, content: str, mode: int, expected: str
) -> None:
    cfg = config(tmp_path)
    assert vigil(cfg, "init").returncode == 0
    key_file = tmp_path / "host.key"
    key_file.write_text(content)
    key_file.chmod(mode)
    done = vigil(cfg, "list")
    assert done.returncode == 2
    assert "repository.key_file" in done.stderr and str(key_file) in done.stderr
    assert expected in done.stderr
    assert content.strip() not in done.stderr


def test_init_refuses_a_key_file_for_an_unencrypted_repository(tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(config(tmp_path).read_text().replace('passphrase_env = "VIGIL_T_PP"\n', ""))
    done = vigil(cfg, "init", "--encryption", "none")
    assert done.returncode == 2 and "key_file" in done.stderr
    assert not (tmp_path / "repo").exists() and not (tmp_path / "host.key").exists()


def test_host_key_slots_are_as_strict_as_passphrase_slots(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", passphrase=SECRET, state_dir=tmp_path / "state")
    key = os.urandom(32)
    slot = repo.add_host_key(key, "backup01")
    # A wrong passphrase names no host-key slot as unreadable: it is simply not its kind.
    with pytest.raises(WrongPassphraseError) as wrong:
        Repository.open(tmp_path / "repo", "wrong", tmp_path / "state")
    assert "unreadable" not in str(wrong.value)
    other = os.urandom(32)
    with pytest.raises(HostKeyUnmatchedError, match=f"host key {host_key_id(other)} opens no"):
        Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=other)
    assert slot == host_key_id(key)  # named by the key's id: opening reads that one slot
    # The config is sealed into the host-key slot as into any other: an edit is caught.
    config = json.loads((tmp_path / "repo" / "config").read_text())
    config["chunk_size"] = 65536
    (tmp_path / "repo" / "config").write_text(json.dumps(config))
    with pytest.raises(ConfigTamperedError):
        Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)
    # An unencrypted config in place of an encrypted one is refused with a host key too.
    config.update(encryption="none", id_key="00" * 32, chunk_size=repo.chunk_size)
    (tmp_path / "repo" / "config").write_text(json.dumps(config))
    with pytest.raises(ConfigTamperedError, match="unencrypted"):
        Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)
    # A damaged host-key slot is reported, not trusted.
    (tmp_path / "repo" / "keys" / slot).write_text('{"kdf": "host-key", "salt": "zz"}')
    (tmp_path / "repo" / "config").write_bytes(repo.config.to_bytes())
    with pytest.raises(HostKeyUnmatchedError, match="its slot is unreadable"):
        Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)
    # Adding the host again writes a good slot over the damaged one.
    assert repo.add_host_key(key, "backup01") == slot
    assert Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)


def test_host_slots_never_crowd_out_the_passphrase(tmp_path: Path) -> None:
    """One open tries at most 8 passphrase slots (each may cost an Argon2id); host-key slots
    (one HKDF, and read by name) must not use up that allowance."""
    repo = Repository.init(tmp_path / "repo", passphrase=SECRET, state_dir=tmp_path / "state")
    for n in range(12):
        repo.add_host_key(os.urandom(32), f"host-{n}")
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 13
    assert Repository.open(tmp_path / "repo", SECRET, tmp_path / "state").encrypted


def test_the_last_passphrase_cannot_be_removed(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert vigil(cfg, "init").returncode == 0
    rows = key_rows(cfg, passphrase=None)  # listing: the host key is enough
    passphrase_slot = next(r.split()[0] for r in rows if "argon2id" in r)
    # Changing who may open the repository takes the passphrase, not the host's key.
    (tmp_path / "second").write_text("second one\n")
    by_host = vigil(cfg, "key", "add", "--file", str(tmp_path / "second"), passphrase=None)
    assert by_host.returncode == 2 and "VIGIL_T_PP" in by_host.stderr
    refused = vigil(cfg, "key", "remove", passphrase_slot, passphrase="second one")
    assert refused.returncode == 2 and "wrong passphrase" in refused.stderr
    assert vigil(cfg, "key", "add", "--file", str(tmp_path / "second")).returncode == 0
    # The last passphrase slot stays: host keys alone would die with their hosts.
    host_slot = host_key_id(bytes.fromhex((tmp_path / "host.key").read_text()))
    second_slot = next(
        r.split()[0] for r in key_rows(cfg, None) if "argon2id" in r and passphrase_slot not in r
    )
    assert vigil(cfg, "key", "remove", passphrase_slot, passphrase="second one").returncode == 0
    mine = vigil(cfg, "key", "remove", second_slot, passphrase="second one")
    assert mine.returncode == 2 and "is the one your passphrase opens" in mine.stderr
    # Opened by the host key (the library allows it), the last passphrase slot still stays.
    key = bytes.fromhex((tmp_path / "host.key").read_text())
    repo = Repository.open(tmp_path / "repo", None, tmp_path / "state", host_key=key)
    last = admin.key_remove(repo, second_slot)
    assert last.exit_code == 2 and "holds the repository's last passphrase" in last.lines[0]
    assert redact_text(last.lines[0]) == last.lines[0]  # nothing in it looks like a secret
    # A host is revoked with the passphrase, its key then opens nothing.
    assert vigil(cfg, "key", "remove", host_slot, passphrase="second one").returncode == 0
    gone = vigil(cfg, "list", passphrase=None)
    assert gone.returncode == 2 and "opens no key slot" in gone.stderr


def test_a_key_file_someone_else_could_know_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert vigil(cfg, "init").returncode == 0
    key_file = tmp_path / "host.key"
    real = tmp_path / "real.key"
    key_file.rename(real)
    key_file.symlink_to(real)
    linked = vigil(cfg, "list", passphrase=None)
    assert linked.returncode == 2 and "is a symbolic link" in linked.stderr
    key_file.unlink()
    real.rename(key_file)
    if os.geteuid() == 0:
        os.chown(key_file, 65534, 65534)  # planted by another user
        foreign = vigil(cfg, "list", passphrase=None)
        assert foreign.returncode == 2 and "belongs to uid 65534" in foreign.stderr
        os.chown(key_file, 0, 0)
    key_file.write_bytes(b"\xff\xfe" * 10)
    binary = vigil(cfg, "list", passphrase=None)
    assert binary.returncode == 2 and "does not hold text" in binary.stderr
    os.chmod(tmp_path, 0o777)
    try:
        open_dir = vigil(cfg, "list", passphrase=None)
        assert open_dir.returncode == 2 and "chmod go-w" in open_dir.stderr
    finally:
        os.chmod(tmp_path, 0o700)


def test_init_does_not_make_the_key_files_directory(tmp_path: Path) -> None:
    cfg = config(tmp_path, key_file="missing/dir/host.key")
    done = vigil(cfg, "init")
    assert done.returncode == 2 and "create it (mode 0700" in done.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "repo").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="root making the key for a service user")
def test_root_makes_the_key_file_for_the_owner_of_its_directory(tmp_path: Path) -> None:
    from protector.hostkey import create_host_key, read_host_key

    service = tmp_path / "var-lib-vigil"
    service.mkdir(mode=0o700)
    os.chown(service, 61234, 61234)  # as /var/lib/vigil belongs to the service's user
    key, made = create_host_key(str(service / "repository.key"), "repository.key_file", "cfg")
    st = (service / "repository.key").stat()
    assert made and (st.st_uid, st.st_gid, st.st_mode & 0o777) == (61234, 61234, 0o600)
    assert read_host_key(str(service / "repository.key"), "k", "cfg") == key
    # Made once: a second call reads the same key, never a new one over it.
    assert create_host_key(str(service / "repository.key"), "k", "cfg") == (key, False)


async def test_doctor_says_when_the_passphrase_went_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a host key nothing on the host uses the passphrase any more, so a wrong one in
    the vault would go unnoticed until a new host needs it."""
    from protector.config import load_config
    from protector.doctor import repository_check

    cfg_path = config(tmp_path)
    assert vigil(cfg_path, "init").returncode == 0
    cfg = load_config(cfg_path)
    monkeypatch.setenv("VIGIL_T_PP", SECRET)
    good = await repository_check(cfg)
    assert good.status == "ok" and "opened by this host's key" in good.detail
    monkeypatch.setenv("VIGIL_T_PP", "what the vault says now")
    stale = await repository_check(cfg)
    assert stale.status == "warn" and "the configured passphrase does not" in stale.detail
    assert "vigil key add" in stale.fix and not stale.needed
    monkeypatch.delenv("VIGIL_T_PP")  # a host that holds only its key: nothing to check
    assert (await repository_check(cfg)).status == "ok"
