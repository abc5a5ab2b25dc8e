"""Which points prune may touch: a VM that is in scope but cannot be given one policy right
now (an equal-priority conflict, an identity not known yet) keeps every point."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from policies.loader import load_policies
from protector.policyaccess import PruneScope, retention_rules
from repository import Manifest, VmIdentity
from repository.prune import plan

from .helpers import policy

VC = "vc-uuid"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def points(vm: VmIdentity, n: int) -> list[Manifest]:
    out = []
    for i in range(n):
        t = NOW - timedelta(days=60 - i)  # all far older than orphan_keep_days
        out.append(Manifest(f"{vm.name}-{i}", vm, i + 1, None, None, 1 << 20, t, t, t, (), (), "a"))
    return out


def node(name: str, instance_uuid: str | None, moref: str) -> SimpleNamespace:
    ident = instance_uuid or f"moref:{moref}"
    return SimpleNamespace(
        name=name, moref=moref, instance_uuid=instance_uuid, identity=f"{VC}/{ident}"
    )


def test_conflicted_and_unidentified_vms_keep_every_point_real_orphans_do_not(tmp_path: Path):
    (tmp_path / "p.toml").write_text(
        policy("a", 'names = ["*"]') + policy("b", 'names = ["*"]', priority=5)
    )
    policies = load_policies(tmp_path)
    protected = VmIdentity(VC, "iu-protected", "protected", moref="vm-1")
    conflicted = VmIdentity(VC, "iu-conflict", "conflicted", moref="vm-2")
    unidentified = VmIdentity(VC, "iu-unknown", "unidentified", moref="vm-3")
    orphan = VmIdentity(VC, "iu-orphan", "orphan", moref="vm-4")
    scope = PruneScope()
    scope.add(node("protected", "iu-protected", "vm-1"), "a", ())
    scope.add(node("conflicted", "iu-conflict", "vm-2"), None, ("a", "b"))
    # The tree has not got this VM's instance UUID yet: its identity is its MoRef.
    scope.add(node("unidentified", None, "vm-3"), "a", ())
    rule_for = retention_rules(policies, scope, UTC)
    manifests = [m for vm in (protected, conflicted, unidentified, orphan) for m in points(vm, 5)]
    decisions = plan(manifests, rule_for, NOW, orphan_keep_days=0)
    deleted = {d.point_id for d in decisions if d.delete}
    assert deleted == {f"protected-{i}" for i in range(2)} | {f"orphan-{i}" for i in range(5)}
    why = {d.point_id: d.reason for d in decisions}
    assert "conflict" in why["conflicted-0"] and "a, b" in why["conflicted-0"]
    assert "instance UUID is unknown" in why["unidentified-0"]


def test_a_plain_protected_by_mapping_still_works(tmp_path: Path):
    (tmp_path / "p.toml").write_text(policy("a", 'names = ["*"]'))
    rule_for = retention_rules(load_policies(tmp_path), {f"{VC}/iu-1": "a"}, UTC)
    assert rule_for(VmIdentity(VC, "iu-1", "x"), "a") is not None
    assert rule_for(VmIdentity(VC, "iu-2", "y"), "a") is None


def test_a_cluster_term_of_one_vcenter_keeps_the_points_of_the_others(tmp_path: Path):
    """With several vCenters each cluster term sees only its own vCenter's VMs: another
    vCenter's VM would look like an orphan, so its points are kept (its leader prunes)."""
    import asyncio

    from protector.config import load_config
    from protector.daemon.pruner import Pruner

    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "p.toml").write_text(policy("a", 'names = ["*"]'))
    mine = VmIdentity(VC, "iu-orphan", "orphan-here", moref="vm-1")
    theirs = VmIdentity("other-vc-uuid", "iu-elsewhere", "elsewhere", moref="vm-1")
    cfg_path = tmp_path / "vigil.toml"
    cfg_path.write_text(
        '[vcenter]\nurl = "https://vc.example.com"\nuser = "u"\npassword_env = "X"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "pol"\n'
    )
    pruner = Pruner(
        load_config(cfg_path), UTC, SimpleNamespace(), [], asyncio.Event(), lambda: True
    )
    pruner.judges = lambda vcenter_uuid: vcenter_uuid == VC
    policies = load_policies(tmp_path / "pol")
    rule_for = pruner._only_judged(retention_rules(policies, PruneScope(), UTC))
    decisions = plan([*points(mine, 3), *points(theirs, 3)], rule_for, NOW, orphan_keep_days=0)
    deleted = {d.point_id for d in decisions if d.delete}
    assert deleted == {f"orphan-here-{i}" for i in range(3)}  # a real orphan of its own
    why = {d.point_id: d.reason for d in decisions}
    assert "its own leader prunes it" in why["elsewhere-0"]
