"""`vigil inventory`: the VM inventory as vigil sees it, once or live."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from protector.cli.common import json_option, print_json
from protector.cli.vcenter_choice import vcenter_option


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inventory",
        help="show the vCenter VM inventory (or follow it live with --watch)",
        description="Log in to vCenter and print every VM with its inventory path and power "
        "state: the first thing to run, it proves the URL, the certificate and the "
        "credentials in the configuration work. --watch keeps running and prints one line per "
        "inventory event (added, removed, renamed, moved, tagged, ...).",
        epilog="Examples:\n\n"
        "  vigil inventory\n"
        "  vigil inventory --json | jq -r '.[].path'\n"
        "  vigil inventory --watch --json      # one JSON object per line, per event",
    )
    json_option(
        p,
        "print a JSON list of VMs (path, name, moref, instance_uuid, power_state, "
        "template); with --watch one JSON object per event and line",
    )
    p.add_argument(
        "--watch", action="store_true", help="follow inventory changes until Ctrl-C/SIGTERM"
    )
    vcenter_option(p, "to show (default: every configured one)")
    p.set_defaults(handler=run)


def vm_record(vm: Any, vcenter: str = "") -> dict[str, Any]:
    """One VM; `vcenter`, the configured name of its vCenter, when several are configured
    (then the path carries it too: `east:/DC0/vm/web-1`)."""
    return {
        **({"vcenter": vcenter} if vcenter else {}),
        "path": f"{vcenter}:{vm.path}" if vcenter else vm.path,
        "name": vm.name,
        "moref": vm.moref,
        "instance_uuid": vm.instance_uuid,
        "power_state": vm.power_state,
        "template": vm.template,
    }


def render_tree(vms: list[Any]) -> str:
    """Paths as an indented tree, VMs with their power state."""
    lines: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for vm in sorted(vms, key=lambda v: v.path):
        parts = tuple(p for p in vm.path.split("/") if p)
        for depth in range(1, len(parts)):
            prefix = parts[:depth]
            if prefix not in seen:
                seen.add(prefix)
                lines.append("  " * (depth - 1) + prefix[-1] + "/")
        state = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}.get(
            vm.power_state, vm.power_state
        )
        extra = ", template" if vm.template else ""
        lines.append("  " * (len(parts) - 1) + f"{parts[-1]}  [{state}{extra}]  {vm.moref}")
    lines.append(f"{len(vms)} VMs")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    from protector.cli.common import config_of
    from protector.cli.vcenter_choice import chosen, one_vcenter
    from protector.vsphere.connect import open_session
    from watcher.inventory import read_inventory_with_tags

    cfg = config_of(args)
    if args.watch:
        return await _watch(one_vcenter(cfg, args, "inventory --watch"), args.json)
    if cfg.several_vcenters and not args.vcenter:
        return await _several(cfg, args.json)
    cfg = chosen(cfg, args)
    session = await open_session(cfg)
    try:
        tree = await read_inventory_with_tags(session, required=False)
    finally:
        await session.close()
    vms = tree.vms()
    if args.json:
        print_json(sorted((vm_record(v) for v in vms), key=lambda r: r["path"]))
    else:
        print(render_tree(vms))
    return 0


async def _several(cfg: Any, as_json: bool) -> int:
    """Every configured vCenter's VMs, each under its vCenter's name."""
    from protector.vcenters import read_trees

    trees = await read_trees(cfg, tags_required=False)
    if as_json:
        records = [vm_record(v, name) for name, tree in trees.items() for v in tree.vms()]
        print_json(sorted(records, key=lambda r: r["path"]))
        return 0
    for name, tree in trees.items():
        print(f"{name}: {cfg.vcenters[name].url}")
        print("\n".join("  " + line for line in render_tree(tree.vms()).splitlines()))
    return 0


async def _watch(cfg: Any, as_json: bool) -> int:
    from protector.vsphere.connect import connect_session, open_session
    from watcher.events import event_to_json
    from watcher.updates import Watcher

    # The first login is checked here, so a wrong password or an untrusted certificate ends
    # the command with one line instead of being retried forever.
    first: Any = await open_session(cfg)

    async def connect() -> Any:
        nonlocal first
        if first is not None:
            session, first = first, None
            return session
        return await connect_session(cfg)

    watcher = Watcher(
        connect,
        tag_interval=cfg.daemon.tag_interval,
        reconcile_interval=cfg.daemon.reconcile_interval,
    )
    runner = asyncio.ensure_future(watcher.run())
    try:
        async for event in watcher.events():
            rec = event_to_json(event)
            if as_json:
                sys.stdout.write(json.dumps(rec, default=str) + "\n")
            else:
                detail = {k: v for k, v in rec.items() if k not in ("event", "moref", "identity")}
                sys.stdout.write(f"{rec['event']:<8} {rec['path']}  {json.dumps(detail)}\n")
            sys.stdout.flush()
    finally:
        await watcher.close()
        runner.cancel()
        if first is not None:
            await first.close()
    return 0
