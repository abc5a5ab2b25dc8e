"""`vigil prune`: apply the policies' retention and free unreferenced data."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from protector.cli.common import (
    config_of,
    json_option,
    open_repository,
    print_json,
    require_policies_path,
)
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="delete restore points the retention rules no longer keep",
        description="Apply each policy's retention (keep_last, daily, weekly, monthly, yearly) to "
        "the points of the VMs it covers now; points of VMs no policy covers are kept for "
        "repository.orphan_keep_days. Manifests go first, then chunks nothing references any "
        "more. --dry-run lists what would go and why. The daemon runs this daily "
        "(daemon.prune_at), for the repository and each copy in use. --copy NAME prunes the "
        "copy [copies.NAME] instead, by each policy's [policy.copy_retention] (default: its "
        "retention).",
        epilog="Examples:\n\n  vigil prune --dry-run\n  vigil prune --json | jq '.bytes_freed'"
        "\n  vigil prune --copy offsite --dry-run",
    )
    p.add_argument(
        "--copy",
        metavar="NAME",
        help="prune the copy [copies.NAME] by the policies' copy_retention",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="change nothing; list each point kept or deleted"
    )
    json_option(p, "print the decisions (point, vm, delete, reason) and what was freed as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from policies.engine import evaluate_one
    from policies.errors import PolicyLoadError
    from protector.cli.common import copy_config
    from protector.policyaccess import PruneScope, copy_policies, load_checked, retention_rules
    from protector.repoaccess import open_configured
    from protector.vcenters import read_trees
    from repository import prune

    cfg = config_of(args)
    require_policies_path(cfg)
    try:
        policies = load_checked(cfg)
    except PolicyLoadError as exc:
        raise UserError(f"policies are invalid; nothing pruned:\n{exc}") from None
    rc = cfg.repository
    if args.copy:  # a copy keeps points by copy_retention, not by the primary's retention
        rc = copy_config(cfg, args.copy)
        repo = await anyio.to_thread.run_sync(open_configured, rc, cfg)
        policies = copy_policies(policies)
    else:
        repo = await open_repository(cfg)
    # Every configured vCenter's inventory: a VM of one left unread would look like an
    # orphan. A tag read failure stops the prune: VMs a tag policy protects would look like
    # orphans and lose their old points.
    trees = await read_trees(cfg, tags_required=policies.selects_by_tag)
    # A conflicted VM, or one whose identity is unknown yet, keeps all its points.
    names = {id(n): name for name, tree in trees.items() for n in tree.vms()}
    scope = PruneScope.of(
        [n for tree in trees.values() for n in tree.vms()],
        lambda facts: evaluate_one(policies, facts),
        lambda node: names[id(node)],
    )
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    rule_for = retention_rules(policies, scope, tz)
    result = await anyio.to_thread.run_sync(
        lambda: prune(repo, rule_for, dry_run=args.dry_run, orphan_keep_days=rc.orphan_keep_days)
    )
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "decisions": [
                    {
                        "point_id": d.point_id,
                        "vm": d.vm_name,
                        "delete": d.delete,
                        "reason": d.reason,
                    }
                    for d in result.decisions
                ],
                "chunks_deleted": result.chunks_deleted,
                "bytes_freed": result.bytes_freed,
                "sweep_deferred": result.sweep_deferred,
                "sweep_limited": result.sweep_limited,
            }
        )
    else:
        print("\n".join(result.lines()))
    # Unreadable manifests are damage the admin must look at (`vigil verify` names them).
    return 1 if result.sweep_limited else 0
