"""`vigil pin POINT` / `vigil unpin POINT`: keep a restore point past its retention."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from protector.cli.common import (
    POINT_HELP,
    config_of,
    json_option,
    open_repository,
    print_json,
    require_point,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pin",
        help="keep a restore point past its retention, until `vigil unpin`",
        description="Pin a restore point: prune (`vigil prune` and the daemon's daily run) never "
        "deletes it, whatever the retention rules say, until it is unpinned. The pin is an "
        "authenticated object in the repository (pins/POINT), so it travels with the "
        "repository and every vigil that uses it honours it. Needs no vCenter.",
        epilog="Examples:\n\n"
        "  vigil pin web-1@latest --note 'before the 2027 upgrade'\n"
        "  vigil unpin 3f2a9c\n"
        "  vigil list --json | jq '.[] | select(.pinned)'",
    )
    p.add_argument("point", metavar="POINT", help=POINT_HELP)
    p.add_argument("--note", default="", metavar="TEXT", help="why it is kept (shown by list)")
    json_option(p, "print the pinned point as JSON")
    p.set_defaults(handler=run_pin)
    u = sub.add_parser(
        "unpin",
        help="let retention delete a pinned restore point again",
        description="Remove a point's pin; the next prune applies the retention rules to it "
        "again. Needs no vCenter.",
        epilog="Example:\n\n  vigil unpin web-1@latest",
    )
    u.add_argument("point", metavar="POINT", help=POINT_HELP)
    json_option(u, "print the unpinned point as JSON")
    u.set_defaults(handler=run_unpin)


async def run_pin(args: argparse.Namespace) -> int:
    repo = await open_repository(config_of(args))
    point = await require_point(repo, args.point)
    new = await anyio.to_thread.run_sync(lambda: repo.pin(point, args.note))
    if args.json:
        print_json({"point": point, "pinned": True, "new": new, "note": args.note})
    else:
        print(f"pinned {point}" + ("" if new else " (it already was)"))
    return 0


async def run_unpin(args: argparse.Namespace) -> int:
    repo = await open_repository(config_of(args))
    point = await require_point(repo, args.point)
    was = await anyio.to_thread.run_sync(repo.unpin, point)
    if args.json:
        print_json({"point": point, "pinned": False, "was_pinned": was})
    else:
        print(f"unpinned {point}" if was else f"{point} was not pinned")
    return 0
