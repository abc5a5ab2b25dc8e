"""Between the watcher's tree, the policies engine and the repository's retention hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

import structlog

from policies.engine import evaluate_one
from policies.errors import PolicyError, PolicyLoadError
from policies.loader import load_policies
from policies.model import Policy, PolicySet, Retention, VmFacts
from policies.retention import RetentionPoint, plan_retention
from protector.backup.model import BackupOptions
from protector.config import Config
from repository import KeepRule, Manifest, VmIdentity

log = structlog.get_logger(__name__)


def vm_facts(node: Any, vcenter: str) -> VmFacts:
    """The plain facts the policy engine matches on, from a watcher VmNode and the
    configured name of its vCenter (a policy's `vcenters`)."""
    return VmFacts(
        vcenter=vcenter,
        key=node.identity,
        path=node.path,
        name=node.name,
        datacenter=node.datacenter or "",
        folder=node.folder or node.location,
        resource_pool=node.resource_pool,
        power_state=node.power_state or "poweredOff",
        guest_id=node.guest_id,
        tags=node.tags,
        attributes=dict(node.attributes),
        annotation=node.annotation or "",
        template=node.template,
        vapps=tuple(getattr(node, "vapps", ()) or ()),
    )


def vapp_root(node: Any, patterns: tuple[str, ...]) -> str | None:
    """The outermost vApp around the VM (node.vapps, innermost first) that one of a
    policy's `vapps` patterns matches: the set a VM selected through its vApp is backed up
    with. None when the policy does not select it through a vApp."""
    if not patterns:
        return None
    from policies.matching import compile_criterion

    crit = compile_criterion("vapps", None, patterns)
    hits = [p for p in getattr(node, "vapps", ()) or () if crit.match(p)]
    return hits[-1] if hits else None


def options_of(policy: Policy | None, *, full: bool = False) -> BackupOptions:
    if policy is None:
        return BackupOptions(full=full)
    b = policy.backup
    return BackupOptions(
        quiesce=b.quiesce,
        quiesce_fallback=b.quiesce_fallback,
        enable_cbt=b.enable_cbt,
        exclude_disks=tuple(b.exclude_disks),
        transports=tuple(b.transport) if b.transport else None,
        full=full,
        policy=policy.name,
    )


def winning_policy(policies: PolicySet, node: Any, vcenter: str) -> Policy | None:
    result = evaluate_one(policies, vm_facts(node, vcenter))
    if result.winner is None:
        return None
    return next(p for p in policies if p.name == result.winner)


# A policy's retention horizon: how long its oldest kept point has at least been kept. A
# month counts 28 days and keep_last the RPO per point, so the estimate errs short (refuses
# rather than lets prune chase points the object lock still holds).
_DAYS = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}


def retention_days(policy: Policy, r: Retention | None = None) -> float:
    """Days `r` (default: the policy's retention) keeps points, at least."""
    r = r or policy.retention
    spans = [getattr(r, k) * d for k, d in _DAYS.items()]
    spans.append(r.keep_last * policy.schedule.rpo.total_seconds() / 86400)
    return max(spans)


def lock_problems(policies: PolicySet, cfg: Config) -> list[PolicyError]:
    """Policies whose retention is shorter than the repository's object lock: prune would
    decide to delete points the lock keeps for days more (kept, reported, retried every
    day), so the policy does not say what happens. Refused at load."""
    days = cfg.repository.object_lock_days
    out: list[PolicyError] = []
    for p in policies:
        keeps = retention_days(p)
        if days and keeps < days:
            out.append(
                PolicyError(
                    p.source or cfg.policies_path,
                    f"retention keeps points about {keeps:g} days, shorter than "
                    f"repository.s3.object_lock_days = {days} in {cfg.path}: prune could "
                    f"not delete them before their lock expires; keep them at least {days} "
                    f"days (e.g. daily = {days}) or lower object_lock_days",
                    policy=p.name,
                    key="retention",
                )
            )
    return out


def copy_problems(policies: PolicySet, cfg: Config) -> list[PolicyError]:
    """Policies naming a copy vigil.toml has no [copies.NAME] for, or keeping points in a
    copy for less time than that copy's object lock (`copy_retention`, else `retention`)."""
    from protector.config_checks import _did_you_mean

    out: list[PolicyError] = []
    known = sorted(cfg.copies)
    for p in policies:
        source = p.source or cfg.policies_path
        for i, name in enumerate(p.copy_to):
            rc = cfg.copies.get(name)
            if rc is None:
                have = f"(it has: {', '.join(known)})" if known else "(it has none)"
                out.append(
                    PolicyError(
                        source,
                        f"no [copies.{name}] in {cfg.path} {have}; add the table or fix the "
                        "name" + _did_you_mean(name, known),
                        policy=p.name,
                        key=f"copy_to[{i}]",
                    )
                )
                continue
            days = rc.object_lock_days
            keeps = retention_days(p, p.retention_of_copies)
            if days and keeps < days:
                key = "copy_retention" if p.copy_retention else "retention"
                out.append(
                    PolicyError(
                        source,
                        f"the copy {name} keeps points about {keeps:g} days ({key}), shorter "
                        f"than copies.{name}.s3.object_lock_days = {days} in {cfg.path}: its "
                        f"prune could not delete them before their lock expires; keep them at "
                        f"least {days} days in [policy.copy_retention] or lower the lock",
                        policy=p.name,
                        key=key,
                    )
                )
    return out


def config_problems(policies: PolicySet, cfg: Config) -> list[PolicyError]:
    """What the policies get wrong about vigil.toml: retention under the repository's or a
    copy's object lock, copies that do not exist."""
    return lock_problems(policies, cfg) + copy_problems(policies, cfg)


def load_checked(cfg: Config) -> PolicySet:
    """The policy set, refused (PolicyLoadError) when one is invalid, keeps points for
    less time than the repository's object lock or names a copy vigil.toml lacks."""
    policies = load_policies(cfg.policies_path, vcenters=cfg.vcenters)
    if problems := config_problems(policies, cfg):
        raise PolicyLoadError(problems)
    return policies


def backup_options_for(cfg: Config, tree: Any, node: Any, *, full: bool) -> BackupOptions:
    """Options for a one-off backup: the VM's policy's, or defaults when none covers it
    (`cfg.vcenter` is the VM's vCenter)."""
    try:
        policies = load_policies(cfg.policies_path, vcenters=cfg.vcenters)
    except PolicyLoadError as exc:
        log.warning("policies.unusable_for_backup", errors=str(exc), using="defaults")
        return BackupOptions(full=full)
    return options_of(winning_policy(policies, node, cfg.vcenter.name), full=full)


class GfsRule:
    """A policy's retention as the repository's KeepRule."""

    def __init__(self, policy: Policy, tz: tzinfo) -> None:
        self.policy = policy
        self.tz = tz

    def keep(self, points: Sequence[Manifest]) -> set[str]:
        plan = plan_retention(
            [RetentionPoint(m.point_id, m.committed_at) for m in points],
            self.policy.retention,
            self.tz,
        )
        return set(plan.keep_ids)

    def explain(self, points: Sequence[Manifest]) -> dict[str, str]:
        """Point id → the rules that keep it ("keep_last 1/2", "daily 2026-12-06 (1/7)"), or
        why none does: prune prints it for each point."""
        plan = plan_retention(
            [RetentionPoint(m.point_id, m.committed_at) for m in points],
            self.policy.retention,
            self.tz,
        )
        out: dict[str, str] = {}
        for d in plan.keep:
            rules = ", ".join("keep_" + r if r.startswith("last ") else r for r in d.reasons)
            out[d.point.id] = f"policy {self.policy.name}: {rules}"
        for d in plan.drop:
            out[d.point.id] = f"policy {self.policy.name}: {', '.join(d.reasons)} ({self._rules()})"
        return out

    def _rules(self) -> str:
        r = self.policy.retention
        return (
            f"keep_last {r.keep_last}, daily {r.daily}, weekly {r.weekly}, "
            f"monthly {r.monthly}, yearly {r.yearly}"
        )

    def __str__(self) -> str:
        r = self.policy.retention
        return (
            f"policy {self.policy.name}: keep-last {r.keep_last}, daily {r.daily}, "
            f"weekly {r.weekly}, monthly {r.monthly}, yearly {r.yearly}"
        )


class KeepAll:
    """Keep every point of a VM prune cannot give one policy right now; deleting by a
    guessed rule, or as an orphan, would lose points nobody chose to lose."""

    def __init__(self, why: str) -> None:
        self.why = why

    def keep(self, points: Sequence[Manifest]) -> set[str]:
        return {m.point_id for m in points}

    def __str__(self) -> str:
        return f"keep everything ({self.why})"


@dataclass
class PruneScope:
    """What prune needs from the inventory: the policy protecting each VM now (by identity),
    and the VMs whose points must all be kept, with why."""

    protected_by: dict[str, str | None] = field(default_factory=dict)
    hold: dict[str, str] = field(default_factory=dict)  # identity → why
    # A VM whose instance UUID is not known yet has an identity no manifest carries: its
    # points are found by vCenter and MoRef instead.
    hold_moref: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, node: Any, winner: str | None, conflict: tuple[str, ...]) -> None:
        self.protected_by[node.identity] = winner
        if conflict:
            self.hold[node.identity] = (
                f"in scope of {', '.join(conflict)} with equal priority, a conflict; "
                "kept until it is resolved"
            )
        if (winner or conflict) and node.instance_uuid is None:
            vcenter = node.identity.split("/", 1)[0]
            self.hold_moref[(vcenter, node.moref)] = (
                f"in scope of {winner or ', '.join(conflict)} but its instance UUID is "
                "unknown right now"
            )

    @classmethod
    def of(
        cls, nodes: Any, evaluate: Callable[[VmFacts], Any], vcenter_of: Callable[[Any], str]
    ) -> PruneScope:
        """The scope of every VM in `nodes`; `evaluate` gives the engine's VmResult,
        `vcenter_of` the configured name of a node's vCenter."""
        scope = cls()
        for node in nodes:
            res = evaluate(vm_facts(node, vcenter_of(node)))
            scope.add(node, res.winner, tuple(res.conflict))
        return scope

    def held(self, vm: VmIdentity) -> str | None:
        return self.hold.get(f"{vm.vcenter_uuid}/{vm.instance_uuid}") or (
            self.hold_moref.get((vm.vcenter_uuid, vm.moref)) if vm.moref else None
        )


def copy_policies(policies: PolicySet) -> PolicySet:
    """The policies with each one's copy retention in place of its retention: what prune
    applies to a copy ([copies.NAME]; `vigil prune --copy`, the daemon's copier)."""
    from dataclasses import replace

    return PolicySet(
        tuple(replace(p, retention=p.retention_of_copies) for p in policies), policies.source
    )


def retention_rules(
    policies: PolicySet,
    scope: PruneScope | Mapping[str, str | None],
    tz: tzinfo,
) -> Callable[[VmIdentity, str | None], KeepRule | None]:
    """rule_for(vm, policy named in its newest point) for prune: keep everything of a VM in
    scope without a single policy; else the policy that protects the VM now (by identity);
    else None — an orphan, kept for orphan_keep_days."""
    if not isinstance(scope, PruneScope):
        scope = PruneScope(protected_by=dict(scope))
    by_name = {p.name: p for p in policies}

    def rule_for(vm: VmIdentity, _point_policy: str | None) -> KeepRule | None:
        why = scope.held(vm)
        if why is not None:
            log.warning("prune.keep_all", vm=vm.name or vm.instance_uuid, why=why)
            return KeepAll(why)
        name = scope.protected_by.get(f"{vm.vcenter_uuid}/{vm.instance_uuid}")
        policy = by_name.get(name) if name else None
        return GfsRule(policy, tz) if policy else None

    return rule_for
