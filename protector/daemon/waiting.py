"""Why a VM's next scheduled backup is not now, for the status page: the planner's own
inputs (policy, newest good point, deferred trigger, failure cooldown) run through the
planner's own decision (next_start), so the page explains the plan rather than re-deriving it.
Pure except `waiting_for`, which reads them off a Planner."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from policies.model import Policy
from policies.schedule import next_run
from protector.daemon.planner import Planner, next_start, planning_margin
from protector.daemon.state import VmState


def wait_reason(
    st: VmState | None,
    policy: Policy,
    now: datetime,
    *,
    tz: tzinfo,
    deferred: str | None = None,
    cooldown_until: float | None = None,
    failures: int = 0,
) -> str:
    """Why a protected VM's next scheduled backup is not now, in words for the status page
    (the same inputs as next_start, so the page explains the planner's own decision):
    a cooldown after failed attempts, a closed backup window, or an RPO not yet due.
    "" when the VM is due now."""
    if cooldown_until is not None and cooldown_until > now.timestamp():
        until = datetime.fromtimestamp(cooldown_until, UTC).astimezone(tz)
        n = f" {failures} failed attempts" if failures else " failed attempts"
        return f"cooldown after{n} until {until:%Y-%m-%d %H:%M}"
    newest = None if deferred is not None else (st.newest_good if st else None)
    margin = planning_margin(policy.schedule.rpo)
    free = next_run(newest, policy.schedule.rpo, None, now, tz=tz, margin=margin).start
    windowed = next_start(st, policy, now, tz=tz, deferred=deferred is not None)
    if windowed > now and windowed > free:
        w = policy.schedule.window
        why = f"{deferred}; " if deferred is not None else ""
        return f"{why}backup window {w} closed; opens {windowed.astimezone(tz):%Y-%m-%d %H:%M}"
    if free > now:
        return f"RPO not yet due; next backup {free.astimezone(tz):%Y-%m-%d %H:%M}"
    return ""


def waiting_for(plan: Planner, key: str, now: datetime, failures: int = 0) -> str:
    """Why the VM's next scheduled backup is not now (wait_reason on the plan's inputs);
    "" for a VM due now or covered by no policy."""
    policy = plan.policy_of(key)
    if policy is None:
        return ""
    return wait_reason(
        plan.state.get(key),
        policy,
        now,
        tz=plan.tz,
        deferred=plan.deferred.get(key),
        cooldown_until=plan.jobs.cooldown_until.get(key) if plan.jobs else None,
        failures=failures,
    )
