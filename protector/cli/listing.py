"""`vigil list`: restore points, newest first."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import config_of, did_you_mean, json_option, open_repository, print_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "list",
        help="list restore points (of one VM, or all)",
        description="List committed restore points from the repository (the manifests are the "
        "source of truth, so this works without the catalog). VM may be a name, inventory path, "
        "MoRef or instance UUID. Needs no vCenter. A VM without points prints an empty list.",
        epilog="Examples:\n\n"
        "  vigil list\n"
        "  vigil list web-1\n"
        "  vigil list web-1 --json | jq -r '.[0].id'      # the newest point's id",
    )
    p.add_argument(
        "vm",
        nargs="?",
        metavar="VM",
        help="only this VM's points: name, inventory path, MoRef or instance UUID",
    )
    json_option(
        p,
        "print a JSON list of points (id, vm, created_at, type, policy, consistency, "
        "disks), newest first",
    )
    p.set_defaults(handler=run)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


async def run(args: argparse.Namespace) -> int:
    from protector.repoaccess import all_manifests, matches_vm, point_summary

    cfg = config_of(args)
    repo = await open_repository(cfg)
    manifests = all_points = await all_manifests(repo)
    if args.vm:
        # A VM without points (or unknown) is an empty listing, not a failure: scripts
        # iterate over the result.
        manifests = [m for m in manifests if matches_vm(m, args.vm)]
    records = sorted(
        (point_summary(m) for m in manifests), key=lambda r: r["created_at"], reverse=True
    )
    if args.json:
        print_json(records)
        return 0
    if not records:
        if args.vm:
            # Still exit 0 (scripts iterate over the result), but a typo deserves a hint.
            by_path = args.vm.strip().startswith("/")
            names = {m.vm.path if by_path else m.vm.name for m in all_points} - {""}
            hint = did_you_mean(args.vm.strip(), names)
            print(f"no restore points of VM {args.vm!r}{hint}")
        else:
            print("no restore points yet")
        return 0
    for r in records:
        read = sum(d["read_bytes"] or 0 for d in r["disks"])
        stored = sum(d["stored_bytes"] or 0 for d in r["disks"])
        print(
            f"{r['id']}  {r['created_at']}  {r['vm']['path'] or r['vm']['name']}  {r['type']}  "
            f"{r['consistency']}  read {human_size(read)}  stored {human_size(stored)}"
        )
        for d in r["disks"]:
            if d["skipped_reason"]:
                print(f"    disk {d['key']} {d['name']}: skipped — {d['skipped_reason']}")
    return 0
