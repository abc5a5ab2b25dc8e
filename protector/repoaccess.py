"""Opening the repository and catalog named in the configuration, errors phrased for admins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from protector.config import Config
from protector.errors import UserError
from repository import LocalState, Manifest, Repository
from repository.admin import MISSING
from repository.errors import (
    ConfigTamperedError,
    PassphraseRequiredError,
    RepositoryError,
    RepositoryNotFoundError,
    WrongPassphraseError,
)


def _open(cfg: Config, create: bool) -> Repository:
    path = Path(cfg.repository.path)
    try:
        return _open_or_init(cfg, path, create)
    except WrongPassphraseError:
        raise UserError(
            f"wrong passphrase for the repository at {path}; check repository.passphrase_env "
            "or repository.passphrase_file"
        ) from None
    except PassphraseRequiredError:
        raise UserError(
            f"the repository at {path} is encrypted: set repository.passphrase_env or "
            "repository.passphrase_file"
        ) from None
    except ConfigTamperedError as exc:
        raise UserError(str(exc)) from None  # already names the repository and the fix
    except RepositoryError as exc:
        raise UserError(f"repository {path}: {exc}") from None


def _open_or_init(cfg: Config, path: Path, create: bool) -> Repository:
    passphrase = cfg.repository.passphrase()
    state_dir = Path(cfg.state_dir) if cfg.state_dir else None
    try:
        return Repository.open(path, passphrase, state_dir)
    except RepositoryNotFoundError:
        # Only `vigil init` creates one: a typo in repository.path must not start backups
        # into a fresh repository somewhere else.
        raise UserError(f"{MISSING.format(path=path)} (repository.path in {cfg.path})") from None


async def open_repository(cfg: Config, *, create: bool = False) -> Repository:
    return await anyio.to_thread.run_sync(_open, cfg, create)


async def open_catalog(repo: Repository) -> LocalState:
    return repo.state  # the catalog's successor: this machine's state for the repository


async def all_manifests(repo: Repository) -> list[Manifest]:
    return await anyio.to_thread.run_sync(repo.manifests)


def point_summary(m: Manifest) -> dict[str, Any]:
    """The `vigil list --json` record of one restore point."""
    info = m.config_info or {}
    backup = info.get("backup", {})
    saved = {d["key"]: d for d in backup.get("disks", [])}
    disks = []
    for d in m.disks:
        s = saved.get(d.key, {})
        disks.append(
            {
                "key": d.key,
                "name": d.base_name,
                "capacity_bytes": d.capacity,
                "read_bytes": s.get("read_bytes"),
                "stored_bytes": s.get("stored_bytes"),
                "change_id": d.change_id,
                "transport": d.transport,
                "transport_mode": s.get("transport_mode") or None,
                "skipped_reason": None,
            }
        )
    for sk in m.skipped_disks:
        s = saved.get(sk.key, {})
        disks.append(
            {
                "key": sk.key,
                "name": s.get("name", ""),
                "capacity_bytes": s.get("capacity_bytes"),
                "read_bytes": 0,
                "stored_bytes": 0,
                "change_id": None,
                "transport": None,
                "transport_mode": None,
                "skipped_reason": sk.reason,
            }
        )
    return {
        "id": m.point_id,
        "vm": {
            "name": m.vm.name,
            "path": m.vm.path,
            "instance_uuid": m.vm.instance_uuid,
            "moref": m.vm.moref,
        },
        "created_at": m.committed_at.isoformat().replace("+00:00", "Z"),
        "type": backup.get("type", "full"),
        "status": "committed",
        "policy": m.policy,
        "consistency": backup.get("consistency", "crash"),
        "disks": disks,
    }


def matches_vm(m: Manifest, spec: str) -> bool:
    s = spec.strip()
    v = m.vm
    return s in (v.name, v.path, v.moref) or s.lower() == v.instance_uuid.lower()
