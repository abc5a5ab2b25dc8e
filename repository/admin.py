"""Entry points behind `vigil init` and `vigil key add|remove|list|passwd`: each returns an
Outcome (exit code, printable lines, data) and prints nothing itself.

`vigil init` is the only way a repository comes into being: every other command facing a
missing one stops with MISSING (exit 2), so a typo in repository.path cannot start full
backups into a fresh empty repository somewhere else.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from repository.cli import Outcome

__all__ = [
    "MISSING",
    "Outcome",
    "init_cmd",
    "key_add",
    "key_add_host",
    "key_list",
    "key_passwd",
    "key_remove",
]
from repository.backend import Backend
from repository.config import CONFIG_KEY, DEFAULT_CHUNK_SIZE
from repository.errors import RepositoryError
from repository.keys import HOST_KEY_KDF, KdfParams, host_key_id, unwrap_master_for_host
from repository.repo import Repository

MISSING = "no repository at {path} — create it with `vigil init`"
UNENCRYPTED_WARNING = (
    "WARNING: this repository is not encrypted: anyone who can read the storage reads every "
    "backed-up disk, and anyone who can write it can forge restore points and data that "
    "vigil will restore as genuine (the checksums only catch accidents)"
)
LOST_PASSPHRASE = (
    "keep the passphrase safe, and apart from the repository: a lost passphrase loses the "
    "data, nobody can recover it (`vigil key add` adds a second passphrase)"
)


def check_passphrase(passphrase: str | None, what: str = "passphrase") -> str:
    if passphrase is None:
        raise RepositoryError(f"no {what} given")
    if not passphrase.strip():
        raise RepositoryError(f"an empty {what} is refused: it would protect nothing")
    return passphrase


def init_cmd(
    path: Path | str,
    passphrase: str | None,
    *,
    encryption: str = "aes-256-gcm",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    kdf: KdfParams | None = None,
    state_dir: Path | None = None,
    backend: Backend | None = None,
) -> Outcome:
    """`backend`: an object store (S3) to create it in; `path` then only names it."""
    root = Path(path)
    where = str(path)
    there = backend.exists(CONFIG_KEY) if backend is not None else (root / CONFIG_KEY).exists()
    if there:
        return Outcome(2, [f"{where} already holds a vigil repository; nothing changed"])
    if encryption not in ("aes-256-gcm", "none"):
        return Outcome(2, [f"unknown encryption {encryption!r} (aes-256-gcm or none)"])
    if encryption == "none":
        if passphrase is not None:
            return Outcome(
                2,
                [
                    "--encryption none but a passphrase is configured: remove "
                    "repository.passphrase_env / passphrase_file, or drop --encryption none"
                ],
            )
        repo = Repository.init(root, chunk_size, None, state_dir=state_dir, backend=backend)
        return Outcome(
            0, [f"created an unencrypted repository at {where}", UNENCRYPTED_WARNING], repo
        )
    try:
        check_passphrase(passphrase)
    except RepositoryError as exc:
        return Outcome(
            2,
            [
                f"{exc}: an encrypted repository needs repository.passphrase_env or "
                "repository.passphrase_file (or --encryption none, which protects nothing)"
            ],
        )
    repo = Repository.init(root, chunk_size, passphrase, kdf, state_dir=state_dir, backend=backend)
    return Outcome(
        0,
        [
            f"created an encrypted repository at {where} (AES-256-GCM, chunk size "
            f"{chunk_size // 1024} KiB)",
            f"key slot: {where.rstrip('/')}/keys/{repo.key_slot} (the master key, wrapped by your "
            "passphrase with Argon2id)",
            LOST_PASSPHRASE,
        ],
        repo,
    )


def key_list(repo: Repository) -> Outcome:
    rows = []
    for info in sorted(repo.backend.list("keys/"), key=lambda i: i.key):
        slot = info.key.removeprefix("keys/")
        try:
            d = json.loads(repo.backend.get(info.key))
            if d["kdf"] == HOST_KEY_KDF:
                kdf = f"host key {d['key_id']} ({d.get('host') or 'unnamed host'})"
            else:
                kdf = f"argon2id t={d['time_cost']} m={d['memory_kib']}KiB p={d['parallelism']}"
        except (ValueError, KeyError, TypeError):
            kdf = "malformed"
        when = datetime.fromtimestamp(info.mtime, UTC).isoformat(timespec="seconds")
        rows.append({"slot": slot, "current": slot == repo.key_slot, "kdf": kdf, "added": when})
    lines = [
        f"{'*' if r['current'] else ' '} {r['slot']}  {r['kdf']}  added {r['added']}" for r in rows
    ]
    opener = "host key" if repo.opened_by_host_key else "passphrase"
    return Outcome(0, [*lines, f"(* = the slot your {opener} opens)"], rows)


def key_add(repo: Repository, new_passphrase: str | None, kdf: KdfParams | None = None) -> Outcome:
    slot = repo.add_key(check_passphrase(new_passphrase, "new passphrase"), kdf)
    return Outcome(0, [f"added key slot {repo.root / 'keys' / slot}"], slot)


def key_add_host(repo: Repository, host_key: bytes, host: str, key_file: str) -> Outcome:
    """A slot for this host's key, unless one already opens with it."""
    mine = host_key_id(host_key)
    for info in sorted(repo.backend.list("keys/"), key=lambda i: i.key):
        blob = repo.backend.get(info.key)
        try:
            d = json.loads(blob)
        except ValueError:
            continue
        if not isinstance(d, dict) or d.get("kdf") != HOST_KEY_KDF or d.get("key_id") != mine:
            continue
        try:
            if unwrap_master_for_host(blob, host_key, repo.config.repo_id, info.key):
                slot = info.key.removeprefix("keys/")
                return Outcome(0, [f"host key {key_file} already opens key slot {slot}"], slot)
        except ValueError:
            continue  # a damaged slot with our id: add a good one
    slot = repo.add_host_key(host_key, host)
    return Outcome(
        0,
        [
            f"added key slot {repo.root / 'keys' / slot}: host key {mine} in {key_file} opens "
            f"the repository on {host} without the passphrase",
            "keep the passphrase: a new host needs it (or its own `vigil key add-host`)",
        ],
        slot,
    )


def key_remove(repo: Repository, slot: str) -> Outcome:
    slots = {i.key.removeprefix("keys/") for i in repo.backend.list("keys/")}
    if slot not in slots:
        return Outcome(2, [f"no key slot {slot!r} in {repo.root} (`vigil key list` shows them)"])
    if slot == repo.key_slot:
        return Outcome(
            2,
            [
                f"key slot {slot} is the one your "
                f"{'host key' if repo.opened_by_host_key else 'passphrase'} opens: open with "
                "another passphrase to remove it, or use `vigil key passwd` to replace it"
            ],
        )
    repo.backend.delete(f"keys/{slot}")
    return Outcome(0, [f"removed key slot {slot}; its passphrase no longer opens {repo.root}"])


def key_passwd(
    repo: Repository, new_passphrase: str | None, kdf: KdfParams | None = None
) -> Outcome:
    repo.change_passphrase(check_passphrase(new_passphrase, "new passphrase"), kdf)
    return Outcome(
        0, [f"passphrase changed: key slot {repo.key_slot} replaces the old one", LOST_PASSPHRASE]
    )


def read_new_passphrase(env_var: str, file: str | None) -> str | None:
    """The new passphrase from a file (first line) or an environment variable, never argv."""
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise RepositoryError(f"cannot read passphrase file {file}: {exc}") from exc
        return lines[0] if lines else ""
    return os.environ.get(env_var)
