"""`vigil backup --policy NAME` / `--folder PATH`: back up a whole scope now, a bounded
number of VMs at a time (limits.concurrent_backups), one result line per VM.

The scope is chosen the way the daemon chooses: `--policy` takes the VMs the policy engine
gives to that policy now (a VM in conflict is listed as skipped, with the policies); and
`--folder` uses the policy engine's own path glob (`/DC0/vm/prod` means the folder and
everything below it, as `/DC0/vm/prod/**` does in a policy). Templates cannot be
snapshotted and are skipped, as the daemon skips them.

A VM whose policy selects it through `vapps` is backed up with its vApp, as one set
(backup/vapp.py): the outermost vApp around it that the policy's `vapps` patterns match,
with every VM in it, nested vApps included (docs/policies.md, "vApps")."""

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
from protector.policyaccess import vapp_root


@dataclass
class Scope:
    """The VMs to back up (with each one's policy, None for defaults) and the ones left out."""

    what: str
    vms: list[tuple[Any, str | None]] = field(default_factory=list)
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    # vApp path -> (the policy that selected it, the VMs of the scope in it)
    vapps: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)


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
        root = None
        if policies is not None and winner is not None:
            chosen = next(p for p in policies if p.name == winner)
            root = vapp_root(node, chosen.select.vapps)
        if root is not None:
            scope.vapps.setdefault(root, (winner or "", []))[1].append(node)
        else:
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
    sets: list[dict[str, Any]] = []
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
        if not scope.vms and not scope.skipped and not scope.vapps:
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

        async def one_set(path: str, policy_name: str) -> None:
            from protector.backup import backup_vapp

            opts = options_of(by_name.get(policy_name), full=args.full)
            paths = {n.moref: n.path for n in tree.vms()}
            async with gate:
                try:
                    ref = await session.call(
                        session.content.searchIndex,
                        "FindByInventoryPath",
                        inventoryPath=path.strip("/"),
                    )
                    if ref is None:
                        raise UserError(f"vApp {path} is gone from the inventory", 1)
                    res = await backup_vapp(
                        ctx, session.client.bind(ref), opts, path=path, vm_paths=paths
                    )
                except Exception as exc:  # the other sets and VMs still run
                    failures.append((path, describe_error(exc)[0]))
                    if not args.json:
                        print(f"  vApp {clean(path)}: FAILED — {describe_error(exc)[0]}")
                    return
            results.extend(res.results)
            failures.extend((paths.get(vm, vm), err) for vm, err in res.failures)
            sets.append(
                {
                    "id": res.group_id,
                    "vapp": path,
                    "complete": res.ok,
                    "points": [r.point_id for r in res.results],
                    "failures": [{"vm": paths.get(vm, vm), "error": e} for vm, e in res.failures],
                }
            )
            if not args.json:
                state = "complete" if res.ok else "INCOMPLETE"
                print(
                    f"  vApp {clean(path)}: set {res.group_id}, {len(res.results)}/"
                    f"{len(res.members)} members, {state}"
                )
                for vm, err in res.failures:
                    print(f"    {clean(paths.get(vm, vm))}: FAILED — {err}")

        if not args.json:
            print(
                f"backing up {len(scope.vms)} VM(s) and {len(scope.vapps)} vApp(s) of "
                f"{scope.what}, {cfg.limits.concurrent_backups} at a time"
            )
            for node, why in scope.skipped:
                print(f"  {clean(node.path)}: skipped — {why}")
        async with asyncio.TaskGroup() as tg:
            for node, policy_name in scope.vms:
                tg.create_task(one(node, policy_name))
            for path, (policy_name, _nodes) in scope.vapps.items():
                tg.create_task(one_set(path, policy_name))
    finally:
        await catalog.close()
        await session.close()
    if args.json:
        print_json(
            {
                "scope": scope.what,
                "points": [result_record(r) for r in results],
                "vapp_sets": sets,
                "failures": [{"vm": vm, "error": err} for vm, err in failures],
                "skipped": [{"vm": n.path, "reason": why} for n, why in scope.skipped],
            }
        )
    else:
        print(f"{len(results)} backed up, {len(failures)} failed, {len(scope.skipped)} skipped")
    return 1 if failures else 0
