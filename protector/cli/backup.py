"""`vigil backup VM`: back up one VM now."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from protector.backup_record import result_record
from protector.cli.common import config_of, json_option, print_json
from protector.cli.progress import ProgressLine, human_bytes
from protector.cli.vcenter_choice import vcenter_option
from protector.errors import UserError
from protector.phases import listening


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backup",
        help="back up one VM (or a vApp, a policy's VMs, a folder) now",
        description="Snapshot the VM, read its disks (only the changed blocks when a previous "
        "restore point and Changed Block Tracking allow), store them deduplicated and remove the "
        "snapshot. The VM's policy (if one covers it) supplies the options. VM may be a name, "
        "inventory path, MoRef or instance UUID. Progress is shown on a terminal (stderr).",
        epilog="Examples:\n\n"
        "  vigil backup web-1\n"
        "  vigil backup /DC0/vm/prod/web-1 --full\n"
        "  vigil backup --vapp /DC0/host/C0/Resources/shop --json\n"
        "  vigil backup --policy gold              # every VM the policy protects, now\n"
        "  vigil backup --folder /DC0/vm/prod --json",
    )
    p.add_argument(
        "vm",
        metavar="VM",
        nargs="?",
        help="name, inventory path (/DC0/vm/...), MoRef (vm-42) or instance UUID",
    )
    p.add_argument(
        "--vapp",
        metavar="PATH",
        help="back up every VM of this vApp (inventory path, e.g. /DC0/host/C0/Resources/APP0) "
        "as one set, nested vApps included; each VM gets its own restore point, and each "
        "point carries the vApp's configuration and the set's members (`vigil list --vapps`)",
    )
    p.add_argument(
        "--policy",
        metavar="NAME",
        help="back up every VM this policy protects now (as the daemon sees them), "
        "limits.concurrent_backups at a time; one result line per VM",
    )
    p.add_argument(
        "--folder",
        metavar="PATH",
        help="back up every VM in this VM folder and below (inventory path, e.g. /DC0/vm/prod; "
        "a policy path glob works too); with --policy, the VMs in both",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="read every allocated block, not only the blocks CBT says changed",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="back the VM up in this process even when `vigil watch` runs on this host "
        "(by default a VM the daemon protects is handed to it: its limits apply and the job "
        "shows in `vigil status`)",
    )
    json_option(p, "print the new restore point as JSON (see `list`)")
    vcenter_option(p, "the VM, vApp or scope is on")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    scoped = args.policy is not None or args.folder is not None
    given = sum((args.vm is not None, args.vapp is not None, scoped))
    if given != 1:
        raise UserError(
            ("only one of these, not several: " if given else "name what to back up: ")
            + "one VM, or a vApp with --vapp PATH, or a scope with --policy NAME and/or "
            "--folder PATH"
        )
    if scoped:
        from protector.cli.backup_scope import run_scope

        return await run_scope(args)
    if args.vapp is not None:
        return await run_vapp(args)
    cfg = config_of(args)
    if not args.in_process:
        from protector.cli.handoff import hand_off

        code = await hand_off(cfg, args)  # None: no daemon here took it
        if code is not None:
            return code
    from protector import phases
    from protector.cli.common import open_repository

    if cfg.several_vcenters or args.vcenter:
        from protector.cli.vcenter_choice import vcenter_of_vm

        cfg = await vcenter_of_vm(cfg, args, args.vm)
    # The repository's key derivation (~0.1-0.5 s of CPU, in a thread) starts first: it runs
    # while this process imports the vCenter and backup code and logs in.
    opening = asyncio.ensure_future(
        phases.timed_await("repository_open", open_repository(cfg, create=True))
    )
    await asyncio.sleep(0)  # it reaches its thread
    from protector.backup import backup_vm
    from protector.cli.common import find_vm_live
    from protector.context import Context
    from protector.policyaccess import backup_options_for
    from protector.repoaccess import open_catalog

    session, repo = await login_then_repository(cfg, opening)
    catalog = None
    try:
        catalog = await open_catalog(repo)  # this machine's state (repo.state): nothing to open
        # The VM, its ancestors and its tags only (policies select by path and tag), not
        # the whole inventory: protector/vsphere/vmfind.py.
        found = await phases.timed_await("lookup", find_vm_live(session, args.vm))
        node = found.node
        opts = backup_options_for(cfg, found.tree, node, full=args.full)
        ctx = Context.create(cfg, session, repo, catalog)
        progress = ProgressLine(f"backup {node.name}")
        vm = session.moref("VirtualMachine", node.moref)
        with listening(progress.phase):  # "creating the snapshot", "removing ..."
            result = await backup_vm(ctx, vm, opts, path=node.path, progress=progress)
        progress.finish()
    finally:
        with phases.timed("exit"):
            await close_all(session, catalog)
    show_result(args, result_record(result))
    return 0


def show_result(args: argparse.Namespace, rec: dict[str, Any], by: str = "") -> None:
    """The new point (a result_record, from this process or the daemon's job `by`)."""
    if args.json:
        print_json(rec)
    else:
        where = f" (by the running daemon, {by})" if by else ""
        print(
            f"{rec['id']}: {rec['type']} {rec['consistency']} backup of {rec['vm']['path']} in "
            f"{rec['seconds']:.1f} s{where}; read {human_bytes(rec['read_bytes'])}, stored "
            f"{human_bytes(rec['stored_bytes'])} new"
        )
        for d in rec["disks"]:
            if d["skipped_reason"]:
                print(f"  {d['address'] or d['key']}: skipped — {d['skipped_reason']}")
            else:
                print(f"  {d['address']}: {d['mode']} via {d['transport']} ({d['reason']})")
    if rec["snapshot_left"]:
        print(
            f"  note: the point is good, but vigil's snapshot is still on {rec['vm']['name']} "
            f"({rec['snapshot_left']}); the next backup of this VM removes it",
        )


async def login_then_repository(cfg: Any, opening: asyncio.Future[Any]) -> tuple[Any, Any]:
    """Imports the vCenter code and logs in while the repository opens (`opening`); the
    session is closed if the repository failed, the opening awaited if the login did."""
    from protector import phases

    try:
        from protector.vsphere.connect import open_session

        phases.record("startup", phases.process_age())
        session = await phases.timed_await("login", open_session(cfg))
    except BaseException as login_exc:
        try:
            await opening
        except Exception as repo_exc:
            # What the sequential order reported first: a missing or unreadable repository
            # (a config problem) outranks an unreachable vCenter (not a cancellation).
            if isinstance(login_exc, Exception):
                raise repo_exc from None
        raise
    try:
        return session, await opening
    except BaseException:
        await session.close()
        raise


async def close_all(session: Any, catalog: Any) -> None:
    """The catalog and the vCenter session (Logout) closed together."""
    closing = [session.close(), *([catalog.close()] if catalog is not None else [])]
    for outcome in await asyncio.gather(*closing, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def run_vapp(args: argparse.Namespace) -> int:
    from protector.backup import backup_vapp
    from protector.cli.common import open_repository
    from protector.cli.vcenter_choice import one_vcenter
    from protector.context import Context
    from protector.policyaccess import backup_options_for
    from protector.repoaccess import open_catalog
    from protector.vsphere.connect import open_session
    from protector.vsphere.vapps import vapp_vms
    from protector.vsphere.vmfind import read_vms

    cfg = one_vcenter(config_of(args), args, "backup --vapp")
    path = "/" + args.vapp.strip("/")
    repo = await open_repository(cfg, create=True)
    session = await open_session(cfg)
    catalog = await open_catalog(repo)
    try:
        idx = session.content.searchIndex
        ref = await session.call(idx, "FindByInventoryPath", inventoryPath=path.strip("/"))
        if ref is None or type(ref).__name__.split(".")[-1] != "VirtualApp":
            raise UserError(
                f"no vApp at inventory path {path!r}; `vigil inventory` shows the VMs and the "
                "paths of the vApps they belong to",
                2,
            )
        vapp = session.client.bind(ref)
        # The VMs of the vApp and of the vApps nested in it, read with their ancestry and
        # tags (policies use both) — not the whole inventory, minutes at 50,000 VMs.
        tree = await read_vms(session, await vapp_vms(session, vapp))
        members = tree.vms()
        # One job, one set of options: the members' policy when they share one.
        choices = {backup_options_for(cfg, tree, v, full=args.full) for v in members}
        if len(choices) == 1:
            opts = choices.pop()
        else:
            opts = options_default(args.full)
            if choices:
                print(
                    f"vigil: the VMs of {path} are covered by different policies; "
                    "backing them up with the default options",
                    file=sys.stderr,
                )
        ctx = Context.create(cfg, session, repo, catalog)
        progress = ProgressLine(f"backup {path}")
        with listening(progress.phase):
            result = await backup_vapp(
                ctx,
                vapp,
                opts,
                path=path,
                vm_paths={v.moref: v.path for v in members},
                progress=progress,
            )
        progress.finish()
    finally:
        await catalog.close()
        await session.close()
    if args.json:
        print_json(
            {
                "group_id": result.group_id,
                "vapp": {"name": result.vapp_name, "moref": result.vapp_moref, "path": path},
                "points": [result_record(r) for r in result.results],
                "failures": [{"vm": vm, "error": err} for vm, err in result.failures],
            }
        )
    else:
        print(
            f"vApp {path}: {len(result.results)} restore point(s), "
            f"{len(result.failures)} failure(s); group {result.group_id}"
        )
        for r in result.results:
            print(
                f"  {r.point_id}: {r.type} {r.consistency} backup of {r.vm.name}; "
                f"read {human_bytes(r.read_bytes)}"
            )
        for vm, err in result.failures:
            print(f"  {vm}: FAILED — {err}")
    return 0 if result.ok else 1


def options_default(full: bool) -> Any:
    from protector.backup import BackupOptions

    return BackupOptions(full=full)
