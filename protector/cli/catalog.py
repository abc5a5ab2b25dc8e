"""`vigil catalog rebuild`: recreate the catalog database from the repository's manifests."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import config_of, json_option, open_repository, print_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "catalog",
        help="maintain this machine's record of the repository",
        description="The catalog (in the state directory) records the newest restore point "
        "per VM, so removed points are detected; `rebuild` raises it to the repository's.",
    )
    sp = p.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    r = sp.add_parser(
        "rebuild",
        help="recreate the catalog from the repository",
        description="Recreate the catalog ([state] dir) from the restore-point manifests, "
        "after it was lost or damaged. Safe to run any time: it never lowers a record.",
    )
    json_option(r, "print the number of points indexed as JSON")
    r.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from protector.repoaccess import open_catalog

    cfg = config_of(args)
    repo = await open_repository(cfg)
    catalog = await open_catalog(repo)
    try:
        live, pruned = await catalog.rebuild(repo)
    finally:
        await catalog.close()
    if args.json:
        print_json({"restore_points": live, "pruned": pruned})
    else:
        print(f"catalog rebuilt: {live} restore points, {pruned} pruned")
    return 0
