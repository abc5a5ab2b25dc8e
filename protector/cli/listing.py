"""`vigil list`: restore points, newest first."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import (
    as_of_option,
    clean,
    config_of,
    did_you_mean,
    json_option,
    open_repository,
    print_json,
)
from protector.cli.vcenter_choice import vcenter_option
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "list",
        help="list restore points (of one VM, or all)",
        description="List committed restore points from the repository (the manifests are the "
        "source of truth, so this works without the catalog). VM may be a name, inventory path, "
        "MoRef or instance UUID; a name two VMs share is refused with their paths. Needs no "
        "vCenter. A VM without points prints an empty list.",
        epilog="Examples:\n\n"
        "  vigil list\n"
        "  vigil list web-1\n"
        "  vigil list web-1 --json | jq -r '.[0].id'      # the newest point's id\n"
        "  vigil list --vapps                               # vApp sets, complete or not",
    )
    p.add_argument(
        "vm",
        nargs="?",
        metavar="VM",
        help="only this VM's points: name, inventory path, MoRef or instance UUID",
    )
    p.add_argument(
        "--vapps",
        action="store_true",
        help="list vApp sets instead of points: one line per vApp backup, its members' "
        "points and whether every member has one (complete) or not",
    )
    json_option(
        p,
        "print a JSON list of points (id, vm, created_at, type, policy, consistency, "
        "disks, pinned), newest first",
    )
    as_of_option(p)
    vcenter_option(p, "whose VMs' points to list (it logs in to learn its instance uuid)")
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


def refuse_ambiguous(spec: str, manifests: list[Any]) -> None:
    """Points of two VMs answering to one name (a restored copy, a namesake in another
    folder) are never listed as one history: refuse, as `vigil backup NAME` does, naming each
    VM by its newest path and instance UUID (either one then lists just that VM)."""
    newest: dict[tuple[str, str], Any] = {}
    for m in manifests:
        key = (m.vm.vcenter_uuid, m.vm.instance_uuid.lower())
        if key not in newest or m.committed_at > newest[key].committed_at:
            newest[key] = m
    if len(newest) < 2:
        return
    several = len({vc for vc, _ in newest}) > 1
    listing = "\n".join(
        f"  {clean(m.vm.path or m.vm.name)}  (instance UUID {m.vm.instance_uuid})"
        for m in sorted(newest.values(), key=lambda m: m.vm.path)
    )
    raise UserError(
        f"{len(newest)} VMs with restore points answer to {spec.strip()!r}; name one by "
        + ("--vcenter NAME, " if several else "")
        + f"inventory path or instance UUID:\n{listing}",
        2,
    )


async def run(args: argparse.Namespace) -> int:
    import anyio

    from protector.repoaccess import all_manifests, matches_vm, point_summary

    cfg = config_of(args)
    repo = await open_repository(cfg, as_of=args.as_of)
    manifests = all_points = await all_manifests(repo)
    if args.vcenter:
        from protector.cli.vcenter_choice import vcenter_names_by_uuid

        cfg.for_vcenter(args.vcenter)  # an unknown name: exit 2 before logging in
        uuid = {n: u for u, n in (await vcenter_names_by_uuid(cfg)).items()}[args.vcenter]
        manifests = [m for m in manifests if m.vm.vcenter_uuid == uuid]
    if args.vapps:
        return list_vapp_sets(args, manifests)
    if args.vm:
        # A VM without points (or unknown) is an empty listing, not a failure: scripts
        # iterate over the result.
        manifests = [m for m in manifests if matches_vm(m, args.vm)]
        refuse_ambiguous(args.vm, manifests)
    pinned = await anyio.to_thread.run_sync(repo.pinned_points)
    records = sorted(
        (point_summary(m) | {"pinned": m.point_id in pinned} for m in manifests),
        key=lambda r: r["created_at"],
        reverse=True,
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
            f"{r['id']}  {r['created_at']}  {clean(r['vm']['path'] or r['vm']['name'])}  "
            f"{r['type']}  "
            f"{r['consistency']}  read {human_size(read)}  stored {human_size(stored)}"
            + ("  pinned" if r["pinned"] else "")
        )
        for d in r["disks"]:
            if d["skipped_reason"]:
                print(f"    disk {d['key']} {d['name']}: skipped — {d['skipped_reason']}")
    return 0


def list_vapp_sets(args: argparse.Namespace, manifests: list[Any]) -> int:
    """`vigil list --vapps [VAPP]`: the sets, newest first (VAPP: a name, path or MoRef)."""
    from protector.vappsets import vapp_sets

    sets = vapp_sets(manifests)
    if args.vm:
        spec = args.vm.strip()
        sets = [s for s in sets if spec in (s.group.get(k) for k in ("name", "path", "moref"))]
    records = [s.record() for s in sets]
    if args.json:
        print_json(records)
        return 0
    if not records:
        print("no vApp sets" + (f" of {args.vm!r}" if args.vm else ""))
        return 0
    for r in records:
        have = sum(1 for m in r["members"] if m["point"])
        state = "complete" if r["complete"] else "INCOMPLETE"
        nested = r["vapp"]["nested_vapps"]
        print(
            f"{r['id']}  {r['created_at']}  {clean(r['vapp']['path'] or r['vapp']['name'])}  "
            f"{have}/{len(r['members'])} members  {state}"
            + (f"  ({nested} nested vApp{'s' if nested != 1 else ''})" if nested else "")
        )
        for m in r["members"]:
            print(f"    {clean(m['name'])}: {m['point'] or 'no point'}")
    return 0
