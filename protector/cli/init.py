"""`vigil init`: the only way a repository is created (logic: repository/admin.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from protector.cli.common import check_repository_location, config_of, print_json
from protector.errors import UserError
from repository.admin import init_cmd


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="create the repository named by repository.path (encrypted)",
        description="Create the repository at repository.path, encrypted with the passphrase "
        "from repository.passphrase_env / passphrase_file. No other command creates one. "
        "--encryption none creates an unencrypted repository: anyone who can write the storage "
        "can then forge data.",
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
    cfg = config_of(args)
    check_repository_location(cfg, create=True)
    passphrase = cfg.repository.passphrase()
    state = Path(cfg.state_dir) if cfg.state_dir else None
    try:
        out = await anyio.to_thread.run_sync(
            lambda: init_cmd(
                cfg.repository.path,
                passphrase,
                encryption=args.encryption,
                chunk_size=cfg.repository.chunk_size,
                state_dir=state,
            )
        )
    except OSError as exc:
        raise UserError(
            f"repository.path {cfg.repository.path} (set in {cfg.path}): cannot create the "
            f"repository: {exc.strerror or exc}; make it a path this user can create"
        ) from None
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
