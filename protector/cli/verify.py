"""`vigil verify`: prove the repository can restore what it claims."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import config_of, json_option, open_repository, print_json, require_point


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check restore points (structure, or every byte with --read-data)",
        description="Check that every chunk the restore points reference exists and that the "
        "manifests' authenticated chain is intact. --read-data also decrypts, decompresses and "
        "re-hashes the chunks. Damage is reported chunk by chunk with the points and disks it "
        "breaks; the exit code is 1 on any damage. Needs no vCenter.",
        epilog="Examples:\n\n"
        "  vigil verify                              # structure of every point, fast\n"
        "  vigil verify --read-data --subset 5       # and 5 % of the data (cron)\n"
        "  vigil verify POINT --read-data --json",
    )
    p.add_argument(
        "point",
        nargs="?",
        metavar="POINT",
        help="only this restore point: id, unique id prefix, `latest` or VM@latest",
    )
    p.add_argument(
        "--read-data", action="store_true", help="also read, decrypt and re-hash the chunks"
    )
    p.add_argument(
        "--subset",
        type=float,
        default=100.0,
        metavar="PCT",
        help="with --read-data: read a random PCT %% of the chunks (default 100)",
    )
    json_option(p, "print the report (ok, bad chunks/indexes/manifests, affected points) as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from protector.repoaccess import open_catalog
    from repository import verify

    cfg = config_of(args)
    repo = await open_repository(cfg)
    if args.point:
        args.point = await require_point(repo, args.point)
    heads = None
    catalog = await open_catalog(repo)
    try:
        heads = await catalog.known_heads()
    finally:
        await catalog.close()
    report = await anyio.to_thread.run_sync(
        lambda: verify(
            repo,
            [args.point] if args.point else None,
            read_data=args.read_data,
            subset_pct=args.subset,
            known_heads=heads,
        )
    )
    if args.point is None:
        # The status page shows when the whole repository was last checked, and how (a
        # --subset read counts as a structure check: not every byte was read).
        every_byte = args.read_data and args.subset >= 100
        await anyio.to_thread.run_sync(
            lambda: repo.state.record_verify(
                report.ok, every_byte, report.points_checked, len(report.lines()[1:-1])
            )
        )
    if args.json:
        print_json(
            {
                "ok": report.ok,
                "points_checked": report.points_checked,
                "chunks_referenced": report.chunks_referenced,
                "chunks_read": report.chunks_read,
                "bad_chunks": _bad(report.bad_chunks, "chunk"),
                "bad_indexes": _bad(report.bad_indexes, "index"),
                "bad_manifests": _bad(report.bad_manifests, "manifest"),
                "chain_problems": list(report.chain_problems),
                # point id -> disk keys that cannot be restored intact
                "affected": {p: sorted(d) for p, d in sorted(report.affected().items())},
                "problems": report.lines()[1:-1],  # between the summary and OK/DAMAGED
            }
        )
    else:
        print("\n".join(report.lines()))
    return report.exit_code


def _bad(objects: list[Any], what: str) -> list[dict[str, Any]]:
    return [
        {
            what: b.key,
            "reason": b.reason,
            "affects": [{"point": p, "disk": d} for p, d in b.affects],
        }
        for b in objects
    ]
