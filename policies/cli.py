"""The reports behind `vigil policy check` and `vigil policy diff` (no vCenter calls here:
the caller passes the inventory as VmFacts). Loading errors raise PolicyLoadError; print
`str(error)` to stderr and exit 2."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import Any

from .engine import Evaluation, diff, evaluate
from .loader import load_policies
from .model import PolicySet, VmFacts

Report = dict[str, Any]


def _check(policies: PolicySet, ev: Evaluation) -> Report:
    return {
        "policies": [
            {"name": p.name, "vms": [r.path for r in ev.members(p.name)]}
            for p in sorted(policies, key=lambda p: p.name)
        ],
        "overlaps": [
            {"vm": r.path, "policies": sorted(r.matches), "winner": r.winner} for r in ev.overlaps
        ],
        "unprotected": [r.path for r in ev.unprotected],
    }


def check_report(
    policy_path: str | os.PathLike[str],
    vms: Iterable[VmFacts],
    *,
    vcenters: Collection[str] | None = None,
) -> Report:
    """`{"policies": [{"name", "vms"}], "overlaps": [{"vm", "policies", "winner"}],
    "unprotected": [path]}`, VMs by inventory path, every list sorted. A VM whose top
    policies share a priority has `"winner": None` and is listed as unprotected."""
    policies = load_policies(policy_path, vcenters=vcenters)
    return _check(policies, evaluate(policies, vms))


def report_errors(report: Report) -> list[str]:
    """The errors a check report holds (equal-priority conflicts); empty means exit 0."""
    return [
        f'vm "{o["vm"]}": policies {", ".join(repr(n) for n in o["policies"])} match with the '
        "same highest priority; the VM is not protected until the priorities differ"
        for o in report["overlaps"]
        if o["winner"] is None
    ]


def check_exit_code(report: Report) -> int:
    return 2 if report_errors(report) else 0


def render_check(report: Report) -> str:
    lines: list[str] = []
    for p in report["policies"]:
        n = len(p["vms"])
        lines.append(f"policy {p['name']}: {n} VM{'s' if n != 1 else ''}")
        lines.extend(f"  {vm}" for vm in p["vms"])
    lines.append(f"overlaps: {len(report['overlaps'])}")
    for o in report["overlaps"]:
        names = ", ".join(o["policies"])
        outcome = o["winner"] if o["winner"] else "CONFLICT (equal priority): not protected"
        lines.append(f"  {o['vm']}: {names} -> {outcome}")
    lines.append(f"unprotected: {len(report['unprotected'])}")
    lines.extend(f"  {vm}" for vm in report["unprotected"])
    return "\n".join(lines) + "\n"


def diff_report(
    current_path: str | os.PathLike[str],
    new_path: str | os.PathLike[str],
    vms: Iterable[VmFacts],
    *,
    vcenters: Collection[str] | None = None,
) -> Report:
    """What would change if the policies at `new_path` replaced those at `current_path`:
    `{"protected": [{"vm", "policy"}], "unprotected": [{"vm", "policy"}],
    "changed": [{"vm", "from", "to"}], "policies": {"added", "removed", "modified"},
    "conflicts": [{"vm", "policies"}]}` (conflicts under the new set), lists sorted."""
    old_set = load_policies(current_path, vcenters=vcenters)
    new_set = load_policies(new_path, vcenters=vcenters)
    vm_list = list(vms)
    old_ev, new_ev = evaluate(old_set, vm_list), evaluate(new_set, vm_list)
    d = diff(old_ev, new_ev)

    # The file a policy lives in is not part of what it means.
    old_by = {p.name: replace(p, source="") for p in old_set}
    new_by = {p.name: replace(p, source="") for p in new_set}
    return {
        "protected": [{"vm": e.path, "policy": e.new} for e in d.protected],
        "unprotected": [{"vm": e.path, "policy": e.old} for e in d.unprotected],
        "changed": [{"vm": e.path, "from": e.old, "to": e.new} for e in d.changed],
        "policies": {
            "added": sorted(new_by.keys() - old_by.keys()),
            "removed": sorted(old_by.keys() - new_by.keys()),
            "modified": sorted(n for n in old_by.keys() & new_by.keys() if old_by[n] != new_by[n]),
        },
        "conflicts": [{"vm": r.path, "policies": sorted(r.conflict)} for r in new_ev.conflicts],
    }


def render_diff(report: Report) -> str:
    lines: list[str] = []
    pol = report["policies"]
    for label in ("added", "removed", "modified"):
        if pol[label]:
            lines.append(f"policies {label}: {', '.join(pol[label])}")
    for e in report["protected"]:
        lines.append(f"+ {e['vm']}: now protected by {e['policy']}")
    for e in report["unprotected"]:
        lines.append(f"- {e['vm']}: NO LONGER PROTECTED (was {e['policy']})")
    for e in report["changed"]:
        lines.append(f"~ {e['vm']}: {e['from']} -> {e['to']}")
    for c in report["conflicts"]:
        lines.append(f"! {c['vm']}: conflict between {', '.join(c['policies'])} (equal priority)")
    if not lines:
        lines.append("no change")
    return "\n".join(lines) + "\n"
