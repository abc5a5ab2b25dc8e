"""Opening the repository and catalog named in the configuration, errors phrased for admins."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from protector.config import Config, ConfigError, RepositoryConfig
from protector.errors import UserError
from repository import LocalState, Manifest, Repository
from repository.admin import MISSING
from repository.backend import Backend
from repository.errors import (
    ConfigTamperedError,
    HostKeyUnmatchedError,
    PassphraseRequiredError,
    RepositoryError,
    RepositoryNotFoundError,
    WrongPassphraseError,
)

log = structlog.get_logger(__name__)


def _open(cfg: Config, create: bool, as_of: datetime | None = None) -> Repository:
    return open_configured(cfg.repository, cfg, as_of)


def open_configured(rc: RepositoryConfig, cfg: Config, as_of: datetime | None = None) -> Repository:
    """The repository `rc` names ([repository] or a [copies.NAME]); `as_of`: an S3
    repository read-only as it was then (its locked versions, past delete markers)."""
    where = rc.location
    try:
        backend = open_backend(rc, cfg, as_of)
        return _open_existing(rc, cfg, backend)
    except WrongPassphraseError:
        raise UserError(
            f"wrong passphrase for the repository at {where}; check {rc.where}.passphrase_env "
            f"or {rc.where}.passphrase_file"
        ) from None
    except PassphraseRequiredError:
        host = (
            f" ({rc.where}.key_file {rc.key_file} opens no key slot here: add one with "
            "`vigil key add-host`, which needs the passphrase once)"
            if rc.key_file
            else ""
        )
        raise UserError(
            f"the repository at {where} is encrypted: set {rc.where}.passphrase_env or "
            f"{rc.where}.passphrase_file{host}"
        ) from None
    except ConfigTamperedError as exc:
        raise UserError(str(exc)) from None  # already names the repository and the fix
    except RepositoryError as exc:
        raise UserError(f"repository {where}: {exc}") from None


def open_backend(
    rc: RepositoryConfig, cfg: Config, as_of: datetime | None = None, *, probe: bool = True
) -> Backend | None:
    """The object-store backend of an s3:// repository (bucket checked, If-None-Match
    probed unless read-only), None for a directory (Repository opens it itself)."""
    if not rc.url:
        if as_of is not None:
            raise UserError(
                f"--as-of reads the locked versions kept by an S3 bucket; {rc.key} "
                f"{rc.location} (set in {cfg.path}) is a directory, which keeps no versions"
            )
        return None
    from repository.s3 import S3ConfigError, open_s3_backend

    opts = rc.s3_options()
    if "max_connections" not in rc.s3:  # one connection per I/O thread
        opts = replace(opts, max_connections=max(cfg.limits.io_threads, 2))
    try:
        return open_s3_backend(opts, as_of_time=as_of, probe=probe)
    except S3ConfigError as exc:
        raise UserError(f"{exc} (set in {cfg.path})") from None
    except RepositoryError as exc:  # the service refused, is unreachable, ignores If-None-Match
        raise UserError(f"{rc.key} {rc.url} (set in {cfg.path}): {exc}") from None


def label(rc: RepositoryConfig) -> Path:
    """The Path a Repository is named by: its directory, or the url (only shown)."""
    return Path(rc.location)


def _open_existing(rc: RepositoryConfig, cfg: Config, backend: Backend | None) -> Repository:
    state_dir = Path(cfg.state_dir) if cfg.state_dir else None
    try:
        host_key = rc.host_key()
        if host_key is not None:
            try:
                return Repository.open(label(rc), None, state_dir, backend, host_key=host_key)
            except HostKeyUnmatchedError as exc:
                log.warning(
                    "repository.host_key_unmatched",
                    repository=rc.location,
                    key_file=rc.key_file,
                    error=str(exc),
                    fix="opening with the passphrase instead (slow); `vigil key add-host` "
                    "adds a slot for this host's key",
                )
        elif rc.key_file:
            log.warning(
                "repository.host_key_missing",
                repository=rc.location,
                key_file=rc.key_file,
                fix="opening with the passphrase instead (slow); `vigil key add-host` creates "
                "the key file and its slot",
            )
        missing = host_key is None
        return Repository.open(label(rc), _passphrase(rc, missing), state_dir, backend=backend)
    except RepositoryNotFoundError:
        # Only `vigil init` creates one: a typo in repository.path must not start backups
        # into a fresh repository somewhere else.
        missing = MISSING.format(path=rc.location)
        if rc.where != "repository":
            missing = missing.replace("`vigil init`", f"`vigil init --copy {rc.name}`")
        raise UserError(f"{missing} ({rc.key} in {cfg.path})") from None


def _passphrase(rc: RepositoryConfig, key_missing: bool) -> str | None:
    """The passphrase, when the host key did not open the repository; if it cannot be had
    either, the error names both ways in."""
    try:
        return rc.passphrase()
    except ConfigError as exc:
        if not rc.key_file:
            raise
        why = "does not exist yet" if key_missing else "opens no key slot of the repository"
        raise UserError(
            f"{rc.where}.key_file {rc.key_file} {why}, and the passphrase cannot be read "
            f"either ({'; '.join(exc.problems)}): make the passphrase available; then "
            "`vigil init` makes the repository and the key, or `vigil key add-host` the key "
            f"for the repository at {rc.location}"
        ) from None


async def open_repository(
    cfg: Config, *, create: bool = False, as_of: datetime | None = None
) -> Repository:
    return await anyio.to_thread.run_sync(_open, cfg, create, as_of)


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
