"""`vigil backup --policy NAME` / `--folder PATH`: back up a whole scope now, a bounded
number of VMs at a time (limits.concurrent_backups), one result line per VM.

The scope is chosen the way the daemon chooses: `--policy` takes the VMs the policy engine
gives to that policy now (a VM in conflict is listed as skipped, with the policies); and
`--folder` uses the policy engine's own path glob (`/DC0/vm/prod` means the folder and
everything below it, as `/DC0/vm/prod/**` does in a policy). Templates cannot be
snapshotted and are skipped, as the daemon skips them."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from policies.engine import evaluate_one
from policies.matching import compile_criterion
from policies.model import PolicySet, VmFacts
from protector.cli.common import clean, config_of, did_you_mean, print_json
from protector.cli.progress import human_bytes
from protector.cli.vcenter_choice import one_vcenter
from protector.errors import UserError


@dataclass
class Scope:
    """The VMs to back up (with each one's policy, None for defaults) and the ones left out."""

    what: str
    vms: list[tuple[Any, str | None]] = field(default_factory=list)
    skipped: list[tuple[Any, str]] = field(default_factory=list)


def folder_glob(path: str) -> str:
    """`/DC0/vm/prod` → `/DC0/vm/prod/**` (the folder and below); a glob stays as given."""
    p = "/" + path.strip().strip("/")
    return p if any(c in p for c in "*?[") else p + "/**"


def select(
    nodes: Sequence[Any],
    facts_of: Callable[[Any], VmFacts],
    policies: PolicySet | None,
    *,
    policy: str | None = None,
    folder: str | None = None,
) -> Scope:
    """Pure: the scope of `--policy` and/or `--folder` (both: VMs in both)."""
    crit = compile_criterion("folders", None, (folder_glob(folder),)) if folder else None
    parts = ([f"policy {policy}"] if policy else []) + ([f"folder {folder}"] if folder else [])
    scope = Scope(" and ".join(parts))
    for node in nodes:
        facts = facts_of(node)
        if crit is not None and not crit.test(facts):
            continue
        result = evaluate_one(policies, facts) if policies is not None else None
        winner = result.winner if result else None
        if policy is not None:
            assert result is not None
            if winner != policy:
                if policy in result.conflict:
                    why = "in conflict between policies " + ", ".join(result.conflict)
                    scope.skipped.append((node, why))
                continue
        if facts.template:
            scope.skipped.append((node, "a template (templates cannot be snapshotted)"))
            continue
        scope.vms.append((node, winner))
    return scope


async def run_scope(args: argparse.Namespace) -> int:
    from policies.errors import PolicyLoadError
    from policies.loader import load_policies
    from protector.backup import backup_vm
    from protector.cli.app import describe_error
    from protector.cli.backup import result_record
    from protector.cli.common import open_repository, require_policies_path
    from protector.context import Context
    from protector.policyaccess import options_of, vm_facts
    from protector.repoaccess import open_catalog
    from protector.vsphere.connect import open_session
    from watcher.inventory import read_inventory_with_tags

    cfg = one_vcenter(config_of(args), args, "backup --policy/--folder")
    policies: PolicySet | None = None
    if args.policy is not None:
        require_policies_path(cfg)
        try:
            policies = load_policies(cfg.policies_path, vcenters=cfg.vcenters)
        except PolicyLoadError as exc:
            raise UserError(f"policies are invalid; nothing backed up:\n{exc}") from None
        names = [p.name for p in policies]
        if args.policy not in names:
            hint = did_you_mean(args.policy, names)
            raise UserError(
                f"no policy {args.policy!r} in {cfg.policies_path}{hint} (`vigil policy check` "
                "lists them)"
            )
    else:
        try:  # the VMs' own policies supply the options, when the policies load
            policies = load_policies(cfg.policies_path, vcenters=cfg.vcenters)
        except (PolicyLoadError, OSError):
            policies = None
    repo = await open_repository(cfg, create=True)
    session = await open_session(cfg)
    catalog = await open_catalog(repo)
    results: list[Any] = []
    failures: list[tuple[str, str]] = []
    try:
        tree = await read_inventory_with_tags(
            session, required=bool(policies and policies.selects_by_tag)
        )
        name = cfg.vcenter.name
        scope = select(
            tree.vms(),
            lambda n: vm_facts(n, name),
            policies,
            policy=args.policy,
            folder=args.folder,
        )
        if not scope.vms and not scope.skipped:
            raise UserError(f"{scope.what} covers no VM (`vigil inventory` shows the VMs)", 1)
        by_name = {p.name: p for p in policies} if policies is not None else {}
        ctx = Context.create(cfg, session, repo, catalog)
        gate = asyncio.Semaphore(cfg.limits.concurrent_backups)

        async def one(node: Any, policy_name: str | None) -> None:
            opts = options_of(by_name.get(policy_name) if policy_name else None, full=args.full)
            async with gate:
                vm = session.moref("VirtualMachine", node.moref)
                try:
                    result = await backup_vm(ctx, vm, opts, path=node.path)
                except Exception as exc:  # one VM's failure must not stop the others
                    failures.append((node.path, describe_error(exc)[0]))
                    if not args.json:
                        print(f"  {clean(node.path)}: FAILED — {describe_error(exc)[0]}")
                    return
            results.append(result)
            if not args.json:
                print(
                    f"  {clean(node.path)}: {result.point_id} {result.type} "
                    f"{result.consistency}; read {human_bytes(result.read_bytes)}, stored "
                    f"{human_bytes(result.stored_bytes)} new"
                )

        if not args.json:
            print(
                f"backing up {len(scope.vms)} VM(s) of {scope.what}, "
                f"{cfg.limits.concurrent_backups} at a time"
            )
            for node, why in scope.skipped:
                print(f"  {clean(node.path)}: skipped — {why}")
        async with asyncio.TaskGroup() as tg:
            for node, policy_name in scope.vms:
                tg.create_task(one(node, policy_name))
    finally:
        await catalog.close()
        await session.close()
    if args.json:
        print_json(
            {
                "scope": scope.what,
                "points": [result_record(r) for r in results],
                "failures": [{"vm": vm, "error": err} for vm, err in failures],
                "skipped": [{"vm": n.path, "reason": why} for n, why in scope.skipped],
            }
        )
    else:
        print(f"{len(results)} backed up, {len(failures)} failed, {len(scope.skipped)} skipped")
    return 1 if failures else 0
