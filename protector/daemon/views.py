"""The status page's and the metrics' view of the daemon: one row per VM (policy, state,
newest point, age against the RPO, next run, failures), the counts, the jobs, the errors.
Pure functions of what the parts hold; nothing here changes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from policies.model import Policy
from protector.daemon.metrics import Metrics
from protector.daemon.planner import Planner

VM_STATES = ("ok", "due", "running", "queued", "breached", "failing", "conflict", "unprotected")


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def vm_status(nodes: list[Any], plan: Planner, runner: Any) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    out = []
    for node in sorted(nodes, key=lambda v: v.path):
        key = node.identity
        policy = plan.policy_of(key)
        st = plan.state.get(key)
        age = (now - st.newest_good).total_seconds() if st and st.newest_good else None
        breached = policy is not None and (age is None or age > policy.schedule.rpo.total_seconds())
        state = state_of(key, policy, age, breached, plan, runner)
        rpo = policy.schedule.rpo.total_seconds() if policy else None
        out.append(
            {
                "path": node.path,
                "name": node.name,
                "moref": node.moref,
                "identity": node.identity,
                "policy": policy.name if policy else None,
                "conflict": list(plan.conflicts.get(key, ())),
                "state": state,
                "newest_point": st.newest_point if st else None,
                "newest_point_at": st.newest_good.isoformat() if st and st.newest_good else None,
                "age_seconds": age,
                "age_text": format_age(age),
                "rpo_seconds": rpo,
                "rpo_text": format_age(rpo),
                "next_run": plan.due[key].isoformat() if key in plan.due else None,
                "breached": breached,
                "last_error": st.last_error if st else "",
                "consecutive_failures": runner.consecutive_failures.get(key, 0),
                "retry_at": _iso(runner.cooldown_until.get(key)),
            }
        )
    return out


def state_of(
    key: str, policy: Policy | None, age: float | None, breached: bool, plan: Planner, runner: Any
) -> str:
    """One word per VM; an RPO breach is also a flag of its own, whatever the state."""
    if key in runner.running:
        return "running"
    if key in runner.failures:
        return "failing"  # retries used up; cooling down or trying again
    if key in runner.queued or key in runner.retry_timers:
        return "queued"
    if key in plan.conflicts:
        return "conflict"
    if policy is None:
        return "unprotected"
    if breached:
        return "breached"
    assert age is not None
    return "due" if age > 0.9 * policy.schedule.rpo.total_seconds() else "ok"


def breached(plan: Planner, now: datetime) -> dict[str, str]:
    """The protected VMs whose newest good point is older than their RPO (name → why), for
    the notifications; a VM never backed up is not here: its first backup is on its way, or
    failing (reported as such)."""
    out = {}
    for key, name in plan.winners.items():
        policy, st = plan.policy(name), plan.state.get(key)
        if policy and st and st.newest_good and now - st.newest_good > policy.schedule.rpo:
            node = plan.find_node(key)
            age = format_age((now - st.newest_good).total_seconds())
            out[node.name if node else key] = f"newest point {age} old (policy {policy.name})"
    return out


def jobs_view(runner: Any) -> dict[str, Any]:
    return {
        "running": [r.as_dict() for _, r, _ in runner.running.values()] if runner else [],
        "queued": [
            {"vm_name": q.vm_name, "reason": q.reason, "state": "queued"}
            for q in (runner.queued.values() if runner else [])
        ],
        "recent": [r.as_dict() for r in runner.history][-50:] if runner else [],
        "outcomes": dict(runner.outcomes) if runner else {},
        "coalesced": runner.coalesced if runner else 0,
    }


def state_counts(vms: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in vms:
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    return counts


def refresh_metrics(
    metrics: Metrics,
    vms: list[dict[str, Any]],
    lag: float | None,
    policy_errors: int,
    connected: bool,
) -> None:
    for state in VM_STATES:
        metrics.vms.labels(state).set(sum(1 for v in vms if v["state"] == state))
    metrics.rpo_breaches.set(sum(1 for v in vms if v["breached"]))
    metrics.update_lag.set(lag if lag is not None else float("nan"))
    metrics.policy_errors.set(policy_errors)
    metrics.connected.set(1 if connected else 0)
    metrics.set_vms(vms)
