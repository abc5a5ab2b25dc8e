"""The `vigil` command line.

Exit codes: 0 success; 1 the operation ran and found a problem (damage, a failed
backup); 2 the operation could not run (bad config or policies, login refused,
vCenter unreachable, bad arguments). Expected failures print one clear line to
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import logs
from .config import Config, ConfigError, load_config, resolve_path
from .errors import UserError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_path(args.config))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vigil",
        description=(
            "vigil keeps every VM your policies cover backed up: it watches vCenter, starts a "
            "backup the moment a VM comes into scope and whenever its RPO is due, and restores "
            "byte for byte to the same VM or a new one."
        ),
        epilog=(
            "Configuration: --config PATH, else $VIGIL_CONFIG, else ./vigil.toml "
            "(see config.example.toml). Start with `vigil inventory`, then `vigil policy check`, "
            "then run `vigil watch` as a service."
        ),
    )
    p.add_argument("--config", metavar="PATH", help="configuration file (default: ./vigil.toml)")
    p.add_argument("--log-level", default="warning", help="debug, info, warning (default) or error")
    p.add_argument(
        "--log-json", action="store_true", help="log JSON lines (default when not a terminal)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from . import commands

    commands.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_level = args.log_level
    stream = sys.stderr  # stdout carries command output (and --json)
    if args.command == "watch":
        stream = sys.stdout  # a daemon's log is its output: JSON lines for the journal
        if log_level == "warning":
            log_level = "info"
    try:
        logs.configure(log_level, json=True if args.log_json else None, stream=stream)
    except ValueError as exc:
        parser.error(str(exc))
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except ConfigError as exc:
        print(f"vigil: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vigil: interrupted", file=sys.stderr)
        return 130


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
