"""A live edit that creates an equal-priority conflict keeps the old policy for the VMs it
affects, instead of unprotecting them.

A conflict found in the set the daemon starts with leaves a VM unprotected (engine.py says
why: no one chose a winner). But when the admin *edits* a set that protected a VM and the new
set ties two policies on it, the old winner is the one choice somebody made: dropping it would
stop the VM's backups (and drop its queued job) over a typo in a priority. So such a VM is
*held*: it keeps the policy that protected it, and is reported as held and in conflict until
an edit resolves the tie. Whether the kept policy still covers the VM is judged by the
definition that protected it; its schedule and retention are the edited ones when the policy
still exists under that name, its old ones when the edit removed it (PolicyStore.policy).

A hold lasts while the set in force leaves the VM in conflict and the kept policy still
covers it; a later edit carries it over (the VM keeps the same policy) or ends it (the tie is
gone). A VM that was not protected before the edit gets no hold. Pure: the caller gives the
inventory snapshot and the evaluation of the set in force.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from .engine import CompiledSet, Evaluation, evaluate
from .matching import CompiledPolicy
from .model import VmFacts


def keep_through_conflicts(
    old: CompiledSet, before: Evaluation, new: CompiledSet, vms: Iterable[VmFacts]
) -> tuple[CompiledSet, Evaluation]:
    """The new set as it takes force, and its evaluation of `vms`.

    `before` is `old` (the set in force, with its holds) evaluated on the same VMs. Each VM
    the new set leaves in an equal-priority conflict and that `old` protected keeps its
    winner from `old`.
    """
    fresh = evaluate(new.with_holds({}), vms)
    holds: dict[str, CompiledPolicy] = {}
    results = dict(fresh.results)
    for key, r in fresh.results.items():
        if not r.conflict:
            continue
        b = before.results.get(key)
        if b is None or b.winner is None:
            continue
        kept = old.holds.get(key) if b.held else old.compiled_policy(b.winner)
        if kept is None:  # cannot happen for an evaluation of `old`; never guess
            continue
        holds[key] = kept
        results[key] = replace(r, winner=kept.policy.name, held=True)
    return new.with_holds(holds), Evaluation(results, fresh.policy_names)
