"""Creating and opening a repository: the config, the key slots, the checks between them."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog

from repository.backend import Backend, LocalBackend, owner_to_match
from repository.config import (
    CONFIG_KEY,
    RepoConfig,
    check_initialisable,
    check_sealed_config,
    chunk_size_problem,
    refuse_downgrade,
)
from repository.errors import (
    HostKeyUnmatchedError,
    ObjectNotFoundError,
    PassphraseRequiredError,
    RepositoryError,
    RepositoryNotFoundError,
    WrongPassphraseError,
)
from repository.keys import (
    HOST_KEY_KDF,
    MAX_SLOTS_TRIED,
    KdfParams,
    KeySet,
    host_key_id,
    keyset_from_master,
    keyset_unencrypted,
    slot_kind,
    unwrap_master,
    unwrap_master_for_host,
    wrap_master,
    wrap_master_for_host,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Opened:
    """What a Repository is built from."""

    root: Path
    backend: Backend
    config: RepoConfig
    keys: KeySet
    slot: str | None = None  # the key slot that opened (without `keys/`)
    master: bytes | None = None
    by_host_key: bool = False  # the slot that opened is a host-key slot


def refuse_empty(passphrase: str | None) -> None:
    if passphrase is not None and not passphrase.strip():
        raise RepositoryError("an empty passphrase is refused: it would protect nothing")


def create(
    root: Path,
    chunk_size: int,
    passphrase: str | None,
    kdf: KdfParams | None,
    backend: Backend | None = None,
) -> Opened | None:
    """A new repository at `root` (or in `backend`, an object store: `root` then only
    names it); None when another process created one first (the config is written last
    and write-once: it arbitrates between concurrent creators)."""
    problem = chunk_size_problem(chunk_size)
    if problem:
        raise ValueError(problem)
    refuse_empty(passphrase)
    if backend is None:
        check_initialisable(root)
        owner = owner_to_match(root)  # root creating it in the service user's directory
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        if owner:
            os.chown(root, *owner)
        backend = LocalBackend(root)
    repo_id = secrets.token_hex(16)
    if passphrase is None:
        id_key = secrets.token_bytes(32)
        config = RepoConfig(repo_id, chunk_size, "none", id_key.hex())
        keys, slot, master = keyset_unencrypted(id_key), None, None
    else:
        master = secrets.token_bytes(32)
        config = RepoConfig(repo_id, chunk_size, "aes-256-gcm", None)
        slot = secrets.token_hex(8)
        blob = wrap_master(master, passphrase, repo_id, kdf or KdfParams(), config.canonical())
        backend.put_if_absent(f"keys/{slot}", blob)
        keys = keyset_from_master(master)
    if not backend.put_if_absent(CONFIG_KEY, config.to_bytes()):
        if slot is not None:
            backend.delete(f"keys/{slot}")  # our slot wraps a key nobody uses
        return None
    log.info(
        "repository.init", path=str(root), chunk_size=chunk_size, encrypted=passphrase is not None
    )
    return Opened(root, backend, config, keys, slot, master)


# Slots one passphrase open reads to find the passphrase slots among host-key ones: the
# bound keeps a flood of planted slots from costing a request each without end.
MAX_SLOTS_READ = 64


def open_existing(
    root: Path,
    passphrase: str | None,
    backend: Backend | None = None,
    host_key: bytes | None = None,
) -> Opened:
    """Open with `host_key` (only the host-key slots are tried: HostKeyUnmatchedError when
    none is this key's) or else with `passphrase` (the Argon2id slots)."""
    backend = backend or LocalBackend(root)
    try:
        config = RepoConfig.from_bytes(backend.get(CONFIG_KEY), str(root / CONFIG_KEY))
    except ObjectNotFoundError:
        raise RepositoryNotFoundError(f"{root} is not a vigil repository (no config)") from None
    slots = sorted(info.key for info in backend.list("keys/"))
    if config.encryption == "none":
        # A configured host key expects encryption just as a passphrase does.
        refuse_downgrade(root, passphrase if host_key is None else "host key", slots)
        if config.id_key is None:
            raise RepositoryError(f"{root / CONFIG_KEY}: unencrypted but no id_key")
        return Opened(root, backend, config, keyset_unencrypted(bytes.fromhex(config.id_key)))
    if config.encryption != "aes-256-gcm":
        raise RepositoryError(f"{root / CONFIG_KEY}: unknown encryption {config.encryption!r}")
    if host_key is not None:
        return _open_with_host_key(root, backend, config, slots, host_key)
    if passphrase is None:
        raise PassphraseRequiredError(f"repository {root} is encrypted: a passphrase is needed")
    malformed: list[str] = []
    tried = 0  # passphrase slots: each may cost an Argon2id at its slot's (bounded) price
    for key in slots[:MAX_SLOTS_READ]:
        try:
            blob = backend.get(key)
            if slot_kind(blob) == HOST_KEY_KDF:
                continue  # a host's key opens it, not a passphrase; it costs no Argon2id
            if tried == MAX_SLOTS_TRIED:
                break
            tried += 1
            got = unwrap_master(blob, passphrase, config.repo_id, key)
        except (ValueError, ObjectNotFoundError) as exc:
            malformed.append(str(exc))  # a stray or damaged slot must not block the others
            continue
        if got is not None:
            check_sealed_config(root, config, got, key)
            keys = keyset_from_master(got.master)
            return Opened(root, backend, config, keys, key.removeprefix("keys/"), got.master)
    extra = f" (unreadable key slots: {'; '.join(malformed)})" if malformed else ""
    if tried == MAX_SLOTS_TRIED or len(slots) > MAX_SLOTS_READ:
        log.warning(
            "repository.too_many_key_slots",
            path=str(root),
            slots=len(slots),
            fix="remove key slots you do not know (`vigil key list`, `vigil key remove`)",
        )
        extra += (
            f" (tried {tried} passphrase slots of {len(slots)} key slots, the most one open "
            f"tries: remove slots nobody uses from {root / 'keys'})"
        )
    raise WrongPassphraseError(f"wrong passphrase for repository {root}{extra}")


def host_slot_name(host_key: bytes) -> str:
    """A host key's slot is named by the key's public id: opening reads that one object."""
    return f"keys/{host_key_id(host_key)}"


def _open_with_host_key(
    root: Path, backend: Backend, config: RepoConfig, slots: list[str], host_key: bytes
) -> Opened:
    key = host_slot_name(host_key)
    why = "its slot is not there (never added, or removed)"
    if key in slots:
        try:
            got = unwrap_master_for_host(backend.get(key), host_key, config.repo_id, key)
        except (ValueError, ObjectNotFoundError) as exc:
            got, why = None, f"its slot is unreadable ({exc})"
        else:
            why = "its slot is another key's (replaced?)"
        if got is not None:
            check_sealed_config(root, config, got, key)
            keys = keyset_from_master(got.master)
            slot = key.removeprefix("keys/")
            return Opened(root, backend, config, keys, slot, got.master, by_host_key=True)
    raise HostKeyUnmatchedError(
        f"host key {host_key_id(host_key)} opens no key slot of repository {root}: {why}"
    )


def add_slot(
    backend: Backend, config: RepoConfig, master: bytes, passphrase: str, kdf: KdfParams | None
) -> str:
    """A new key slot wrapping `master`; returns its name (without `keys/`)."""
    refuse_empty(passphrase)
    slot = secrets.token_hex(8)
    blob = wrap_master(master, passphrase, config.repo_id, kdf or KdfParams(), config.canonical())
    backend.put_if_absent(f"keys/{slot}", blob)
    return slot


def add_host_slot(
    backend: Backend, config: RepoConfig, master: bytes, host_key: bytes, host: str
) -> str:
    """The key slot wrapping `master` under `host_key` (named by the key's id, replacing a
    damaged or foreign one there); returns its name."""
    key = host_slot_name(host_key)
    blob = wrap_master_for_host(master, host_key, config.repo_id, config.canonical(), host)
    if not backend.put_if_absent(key, blob):
        backend.replace(key, blob)
    return key.removeprefix("keys/")
