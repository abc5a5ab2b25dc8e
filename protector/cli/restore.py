"""`vigil restore POINT`: onto the VM it came from, or as a new VM."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import POINT_HELP, as_of_option, config_of, json_option, print_json
from protector.cli.progress import ProgressLine, human_bytes
from protector.cli.vcenter_choice import vcenter_option
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "restore",
        help="restore a point onto its VM (--to-existing) or as a new VM (--new-name)",
        description="--to-existing writes the saved disks onto the VM they came from (it must be "
        "powered off, or pass --power-off). --new-name creates a new VM from the saved "
        "configuration, by default where the original lived, and writes its disks; its "
        "network adapters stay disconnected unless --connect-network is given. Progress "
        "is shown on a terminal (stderr).",
        epilog="Examples:\n\n"
        "  vigil restore POINT --new-name web-1-restored --verify\n"
        "  vigil restore POINT --new-name web-1-test --folder /DC0/vm/test --datastore ds2\n"
        "  vigil restore POINT --new-name web-1-dr --datastore-map ds1=ds3 "
        "--network-map prod=isolated\n"
        "  vigil restore POINT --to-existing --power-off --changed-only --power-on\n\n"
        "  vigil restore --vapp-set SET --new-name shop-restored --pool /DC0/host/C0/Resources\n\n"
        "POINT is an id from `vigil list VM` (or a unique prefix of one), `latest`, or VM@latest; "
        "SET an id from `vigil list --vapps` (or a unique prefix).",
    )
    p.add_argument(
        "point",
        metavar="POINT",
        nargs="?",
        help=POINT_HELP,
    )
    p.add_argument(
        "--vapp-set",
        metavar="SET",
        help="with --new-name: restore a whole vApp set as a new vApp of that name (its nested "
        "vApps, every member as a new VM in it, then start order, product/OVF properties and IP "
        "allocation); --pool is the parent pool (default: the original's), --folder the VM folder",
    )
    p.add_argument(
        "--member-suffix",
        metavar="TEXT",
        help="with --vapp-set: appended to each member's name (default: '-' and the new vApp's "
        "name, so the copies do not clash with the originals)",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="with --vapp-set: restore a set some members have no point in (default: refused)",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-existing", action="store_true", help="overwrite the original VM")
    target.add_argument("--new-name", metavar="NAME", help="create a new VM with this name")
    p.add_argument(
        "--folder",
        metavar="PATH",
        help="with --new-name: inventory path of the VM folder (default: the original's)",
    )
    p.add_argument(
        "--pool",
        metavar="PATH",
        help="with --new-name: inventory path of the resource pool (default: the original's)",
    )
    p.add_argument(
        "--datastore",
        metavar="NAME",
        help="with --new-name: datastore for the new VM's files (default: the original's)",
    )
    p.add_argument(
        "--host", metavar="PATH", help="with --new-name: inventory path of the host to use"
    )
    p.add_argument(
        "--datastore-map",
        metavar="SRC=DST",
        action="append",
        help="with --new-name: put what was on datastore SRC on DST (repeatable; wins over "
        "--datastore). By default each disk goes back to the datastore it was on",
    )
    p.add_argument(
        "--network-map",
        metavar="SRC=DST",
        action="append",
        help="with --new-name: connect the adapters that were on network SRC to DST "
        "(repeatable; names in the target datacenter)",
    )
    p.add_argument(
        "--power-off",
        action="store_true",
        help="with --to-existing: shut the VM's guest down first, through VMware Tools, "
        "waiting up to 5 minutes (else a powered-on VM is refused)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --power-off: a hard power-off instead of a guest shutdown",
    )
    p.add_argument(
        "--connect-network",
        action="store_true",
        help="with --new-name: connect the new VM's network adapters (default: disconnected, "
        "so a copy does not join its original's network)",
    )
    p.add_argument("--power-on", action="store_true", help="power the VM on afterwards")
    p.add_argument(
        "--changed-only",
        action="store_true",
        help="with --to-existing: write only the chunks changed since the point, when Changed "
        "Block Tracking on the VM can tell (else everything, and the reason is shown)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-read what was written and compare it with the restore point",
    )
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="with --new-name: keep the new VM when the restore fails (default: destroy it)",
    )
    json_option(p, "print the restored VM and disks as JSON")
    as_of_option(p)
    vcenter_option(
        p,
        "to restore into; default: the one the point was taken on (with --new-name any "
        "configured vCenter: placement is resolved there)",
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from protector.cli.common import open_repository, require_point
    from protector.context import Context
    from protector.restore import (
        Placement,
        find_original_vm,
        restore_as_new,
        restore_to_existing,
    )
    from protector.restore.placing import parse_mapping
    from protector.restore.points import load_point
    from protector.vsphere.connect import open_session

    if args.vapp_set is not None:
        return await run_vapp_set(args)
    if args.point is None:
        raise UserError("name what to restore: a POINT, or a vApp set with --vapp-set SET")
    if args.member_suffix is not None or args.allow_incomplete:
        raise UserError("--member-suffix and --allow-incomplete apply to --vapp-set only")
    placing = (args.folder, args.pool, args.datastore, args.host)
    if args.to_existing and (any(placing) or args.datastore_map or args.network_map):
        raise UserError(
            "--folder/--pool/--datastore/--host/--datastore-map/--network-map apply to "
            "--new-name only"
        )
    datastore_map = parse_mapping(args.datastore_map, "--datastore-map")
    network_map = parse_mapping(args.network_map, "--network-map")
    if args.keep_failed and args.to_existing:
        raise UserError("--keep-failed applies to --new-name only (it keeps a half-built new VM)")
    if args.changed_only and not args.to_existing:
        raise UserError("--changed-only applies to --to-existing only (a new VM gets every chunk)")
    if args.force and not args.power_off:
        raise UserError("--force applies to --power-off only (a hard power-off)")
    if args.connect_network and args.to_existing:
        raise UserError("--connect-network applies to --new-name only")
    cfg = config_of(args)
    repo = await open_repository(cfg, as_of=args.as_of)
    # Before logging in: a typo needs no vCenter.
    args.point = await require_point(repo, args.point)
    if cfg.several_vcenters or args.vcenter:
        import anyio

        from protector.cli.vcenter_choice import vcenter_of_point
        from repository.errors import PointNotFoundError

        try:
            source = await anyio.to_thread.run_sync(repo.load_manifest, args.point)
        except PointNotFoundError:
            raise UserError(
                f"no restore point {args.point!r}; `vigil list` shows the points", 2
            ) from None
        cfg = await vcenter_of_point(cfg, args, source, to_existing=args.to_existing)
    session = await open_session(cfg)
    try:
        ctx = Context.create(cfg, session, repo, None)
        progress = ProgressLine(f"restore {args.point}")
        both: dict[str, Any] = {
            "power_on": args.power_on,
            "verify": args.verify,
            "progress": progress,
        }
        if args.to_existing:
            manifest = await load_point(ctx, args.point)
            vm = await find_original_vm(ctx, manifest)
            result = await restore_to_existing(
                ctx,
                args.point,
                vm,
                power_off=args.power_off,
                force=args.force,
                changed_only=args.changed_only,
                **both,
            )
        else:
            placement = Placement(
                args.new_name,
                args.folder,
                args.pool,
                args.datastore,
                args.host,
                datastore_map=datastore_map,
                network_map=network_map,
            )
            result = await restore_as_new(
                ctx,
                args.point,
                placement,
                keep_failed=args.keep_failed,
                connect_network=args.connect_network,
                **both,
            )
        progress.finish()
    finally:
        await session.close()
    if args.json:
        print_json(result.as_dict())
    else:
        print(
            f"restored {args.point} to {result.vm_name} ({result.vm_moref}): "
            f"{human_bytes(result.written_bytes)} written"
            + (", verified" if args.verify else "")
            + (", powered on" if result.powered_on else "")
        )
        for d in result.disks:
            if d.mode == "changed":
                print(f"  {d.target}: {human_bytes(d.written_bytes)} written ({d.reason})")
        for note in result.notes:
            print(f"  note: {note}")
    return 0


async def run_vapp_set(args: argparse.Namespace) -> int:
    """`vigil restore --vapp-set SET --new-name NAME`: a whole vApp set as a new vApp."""
    from protector.cli.common import open_repository
    from protector.context import Context
    from protector.repoaccess import all_manifests
    from protector.restore.vapp import restore_vapp_set
    from protector.vappsets import find_set, vapp_sets
    from protector.vsphere.connect import open_session

    if args.point is not None:
        raise UserError("give a POINT or --vapp-set SET, not both")
    if not args.new_name:
        raise UserError("--vapp-set restores as a new vApp: give its name with --new-name")
    unsupported = {
        "--datastore": args.datastore,
        "--host": args.host,
        "--datastore-map": args.datastore_map,
        "--network-map": args.network_map,
        "--power-off": args.power_off,
        "--power-on": args.power_on,
        "--changed-only": args.changed_only,
        "--connect-network": args.connect_network,
        "--keep-failed": args.keep_failed,
    }
    given = [k for k, v in unsupported.items() if v]
    if given:
        raise UserError(
            f"{', '.join(given)} do not apply to --vapp-set (members go back to their "
            "datastores, disconnected; power the vApp on in vCenter, in its start order)"
        )
    cfg = config_of(args)
    repo = await open_repository(cfg, as_of=args.as_of)
    vset = find_set(vapp_sets(await all_manifests(repo)), args.vapp_set)  # before logging in
    if (cfg.several_vcenters or args.vcenter) and vset.points:
        from protector.cli.vcenter_choice import vcenter_of_point

        # The set's own vCenter unless --vcenter names another (placement is resolved there).
        member = next(iter(vset.points.values()))
        cfg = await vcenter_of_point(cfg, args, member, to_existing=False)
    session = await open_session(cfg)
    try:
        ctx = Context.create(cfg, session, repo, None)
        progress = ProgressLine(f"restore vApp set {vset.id[:12]}")
        result = await restore_vapp_set(
            ctx,
            vset,
            args.new_name,
            pool=args.pool,
            folder=args.folder,
            member_suffix=args.member_suffix,
            allow_incomplete=args.allow_incomplete,
            verify=args.verify,
            progress=progress,
        )
        progress.finish()
    finally:
        await session.close()
    if args.json:
        print_json(result.as_dict())
        return 0
    print(
        f"restored vApp set {vset.id} as vApp {result.name} ({result.moref}): "
        f"{len(result.members)} member(s), {len(result.vapps) - 1} nested vApp(s)"
        + (", verified" if args.verify else "")
    )
    for _src, r in result.members:
        print(f"  {r.vm_name} ({r.vm_moref}): {human_bytes(r.written_bytes)} written")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
