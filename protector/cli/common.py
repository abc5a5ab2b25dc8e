"""Checks the commands share, so a typical mistake ends in one line that names the config key
or object at fault and suggests the next step (a close match, the command that lists them)."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from protector.config import Config, load_config, resolve_path
from protector.errors import UserError


def config_of(args: argparse.Namespace) -> Config:
    """The configuration named by --config (else $VIGIL_CONFIG, else ./vigil.toml)."""
    return load_config(resolve_path(args.config))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def json_option(p: argparse.ArgumentParser, help: str) -> None:
    """--json: the command's result as JSON on stdout (logs and errors stay on stderr)."""
    p.add_argument("--json", action="store_true", help=help)


def did_you_mean(wanted: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """A "; did you mean A or B?" hint with the closest candidates, or an empty string."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(wanted, pool, n=n, cutoff=cutoff)
    if not close:
        # Long ids differ from a typo in one character; a shared prefix is a match too.
        close = [c for c in pool if wanted and c.startswith(wanted)][:n]
    if not close:
        return ""
    return "; did you mean " + " or ".join(close) + "?"


def require_policies_path(cfg: Config) -> None:
    """A missing policies.path is a setup step not yet done, not a policy error."""
    if not Path(cfg.policies_path).exists():
        raise UserError(
            f"policies.path {cfg.policies_path} (set in {cfg.path}) does not exist; create it "
            "and put *.toml policies in it (start from policies.example/, see docs/policies.md)"
        )


def find_vm(vms: Sequence[Any], spec: str) -> Any:
    """vmlookup.find_vm, with the names closest to a mistyped one."""
    from protector.vsphere.vmlookup import VmNotFound
    from protector.vsphere.vmlookup import find_vm as lookup

    try:
        return lookup(vms, spec)
    except VmNotFound as exc:  # (an ambiguous name's message already lists the candidates)
        key = spec.strip()
        names = [v.path for v in vms] if key.startswith("/") else [v.name for v in vms]
        hint = did_you_mean(key, names)
        raise UserError(
            f"no VM {_what(key)} {key!r}{hint} (`vigil inventory` lists the VMs vigil can see)",
            exc.exit_code,
        ) from None


def _what(spec: str) -> str:
    from protector.vsphere.vmlookup import MOREF_RE, UUID_RE

    if spec.startswith("/"):
        return "at inventory path"
    if UUID_RE.match(spec):
        return "with UUID"
    return "with MoRef" if MOREF_RE.match(spec) else "with name"


async def require_point(repo: Any, point_id: str) -> None:
    import anyio

    """A UserError naming the closest existing ids when `point_id` does not exist."""
    ids = await anyio.to_thread.run_sync(repo.list_points)
    if point_id in ids:
        return
    # Ids share their shape (vm-hash-time-seq): only a near-identical one is a likely typo.
    hint = did_you_mean(point_id, ids, n=2, cutoff=0.9)
    raise UserError(f"no restore point {point_id!r}{hint} (`vigil list` shows the points)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_repository_location(cfg: Config, *, create: bool) -> None:
    """Before opening: a repository path that can never work (under a file, not writable)
    is a configuration problem, reported with repository.path, not as an I/O error later."""
    path = Path(cfg.repository.path)
    where = f"repository.path {path} (set in {cfg.path})"
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{where} is not a directory; point repository.path at a directory")
        if create and not os.access(path, os.W_OK | os.X_OK):
            raise UserError(
                f"{where} is not writable by this user; fix its ownership or permissions"
            )
        return
    if not create:
        return  # repoaccess says there is no repository yet, and which command creates one
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise UserError(
            f"{where} cannot be created: {base} is not a directory; point repository.path "
            "at a directory this user can write"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(
            f"{where} cannot be created: {base} is not writable by this user; create the "
            "directory (mode 0700) for it or change repository.path"
        )


async def open_repository(cfg: Config, *, create: bool = False) -> Any:
    """repoaccess.open_repository with the location checked first and OS errors phrased as
    the repository.path problem they are."""
    from protector.repoaccess import open_repository as open_repo

    check_repository_location(cfg, create=create)
    try:
        return await open_repo(cfg, create=create)
    except OSError as exc:
        raise UserError(
            f"repository.path {cfg.repository.path} (set in {cfg.path}): cannot "
            f"{'create or ' if create else ''}open the repository: {exc.strerror or exc}; make "
            "it a directory this user can write, or change repository.path"
        ) from None
