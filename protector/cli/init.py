"""`vigil init`: the only way a repository is created (logic: repository/admin.py)."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

from protector.cli.common import check_location, config_of, copy_config, print_json
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="create the repository named by repository.path or .url (encrypted)",
        description="Create the repository at repository.path (a directory) or repository.url "
        "(s3://BUCKET/PREFIX: the bucket must exist, with object lock when "
        "repository.s3.object_lock_days > 0; the service must honour If-None-Match, which is "
        "probed), encrypted with the passphrase from repository.passphrase_env / "
        "passphrase_file; with repository.key_file, this host's key (made there if absent) "
        "opens it too, without the passphrase. --copy NAME creates the offsite copy "
        "[copies.NAME] instead, with its own passphrase. No other command creates one. "
        "--encryption none creates an unencrypted repository: anyone who can write the "
        "storage can then forge data.",
    )
    p.add_argument(
        "--copy",
        metavar="NAME",
        help="create the copy repository [copies.NAME] (for `vigil copy --to NAME`)",
    )
    p.add_argument(
        "--encryption",
        choices=["aes-256-gcm", "none"],
        default="aes-256-gcm",
        help="aes-256-gcm (default) or none (no confidentiality, no tamper protection)",
    )
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from protector.hostkey import create_host_key, read_host_key
    from protector.repoaccess import open_backend
    from repository.admin import init_cmd, key_add_host
    from repository.errors import RepositoryError

    cfg = config_of(args)
    rc = copy_config(cfg, args.copy) if args.copy else cfg.repository
    if rc.path:
        check_location(cfg, rc, create=True)
    passphrase = rc.passphrase()
    state = Path(cfg.state_dir) if cfg.state_dir else None

    if rc.key_file and args.encryption == "none":
        raise UserError(
            f"{rc.where}.key_file is set but --encryption none makes a repository with no "
            f"keys: remove {rc.where}.key_file from {cfg.path}, or drop --encryption none"
        )

    if rc.key_file:  # its place checked before anything is made
        read_host_key(rc.key_file, f"{rc.where}.key_file", cfg.path)

    def create() -> Any:
        backend = open_backend(rc, cfg)  # S3: bucket checked, If-None-Match probed
        out = init_cmd(
            rc.location,
            passphrase,
            encryption=args.encryption,
            chunk_size=rc.chunk_size,
            state_dir=state,
            backend=backend,
        )
        if out.exit_code == 0 and rc.key_file and out.data is not None:
            key, _made = create_host_key(rc.key_file, f"{rc.where}.key_file", cfg.path)
            added = key_add_host(out.data, key, socket.gethostname(), rc.key_file)
            out.lines[-1:-1] = added.lines[:1]  # before the passphrase warning
        return out

    try:
        out = await anyio.to_thread.run_sync(create)
    except OSError as exc:
        raise UserError(
            f"{rc.key} {rc.location} (set in {cfg.path}): cannot create the "
            f"repository: {exc.strerror or exc}; make it a path this user can create"
        ) from None
    except RepositoryError as exc:
        raise UserError(f"{rc.key} {rc.location} (set in {cfg.path}): {exc}") from None
    print_outcome(args, out)
    return out.exit_code


def print_outcome(args: argparse.Namespace, out: Any) -> None:
    """Lines to stdout (errors and warnings to stderr); --json: {"exit_code", "lines"}."""
    if getattr(args, "json", False):
        print_json({"exit_code": out.exit_code, "lines": out.lines})
        return
    for line in out.lines:
        bad = out.exit_code or line.startswith("WARNING")
        print(f"vigil: {line}" if bad else line, file=sys.stderr if bad else sys.stdout)
