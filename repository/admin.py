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
from repository.errors import ObjectNotFoundError, RepositoryError
from repository.keys import (
    HOST_KEY_KDF,
    PASSPHRASE_KDF,
    KdfParams,
    slot_kind,
    unwrap_master_for_host,
)
from repository.opening import host_slot_name
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
    """The slot for this host's key (keys/<its id>), unless it opens already."""
    slot = host_slot_name(host_key)
    try:
        opens = unwrap_master_for_host(repo.backend.get(slot), host_key, repo.config.repo_id, slot)
    except (ObjectNotFoundError, ValueError):
        opens = None  # missing, or damaged: written (again) below
    if opens is not None:
        return Outcome(0, [f"host key {key_file} already opens key slot {slot}"], slot)
    name = repo.add_host_key(host_key, host)
    return Outcome(
        0,
        [
            f"added key slot {repo.root / 'keys' / name}: host key {key_file} opens the "
            f"repository on {host} without the passphrase",
            "keep the passphrase: a new host (or this one, after losing the key file) "
            "needs it for its own `vigil key add-host`",
        ],
        name,
    )


def key_remove(repo: Repository, slot: str) -> Outcome:
    kinds = {
        info.key.removeprefix("keys/"): _slot_kind(repo, info.key)
        for info in repo.backend.list("keys/")
    }
    if slot not in kinds:
        return Outcome(2, [f"no key slot {slot!r} in {repo.root} (`vigil key list` shows them)"])
    if slot == repo.key_slot:
        return Outcome(
            2,
            [
                (
                    f"key slot {slot} is the one this host's key opened: remove it with the "
                    "passphrase (`vigil key remove` opens with it)"
                )
                if repo.opened_by_host_key
                else (
                    f"key slot {slot} is the one your passphrase opens: open with another "
                    "passphrase to remove it, or use `vigil key passwd` to replace it"
                )
            ],
        )
    passphrases = [k for k, kind in kinds.items() if kind == PASSPHRASE_KDF]
    if passphrases == [slot]:
        # Host keys alone would tie the data to the hosts holding them: a lost host (or
        # its key file) would lose every backup.
        return Outcome(
            2,
            [
                f"key slot {slot} holds the repository's last passphrase; give it another "
                "one with `vigil key add` before removing this slot (host keys alone die "
                "with their hosts)"
            ],
        )
    repo.backend.delete(f"keys/{slot}")
    what = "its host key" if kinds[slot] == HOST_KEY_KDF else "its passphrase"
    return Outcome(0, [f"removed key slot {slot}; {what} no longer opens {repo.root}"])


def _slot_kind(repo: Repository, key: str) -> str | None:
    try:
        return slot_kind(repo.backend.get(key))
    except ObjectNotFoundError:
        return None


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
