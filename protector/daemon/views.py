"""The status page's and the metrics' view of the daemon: one row per VM (policy, state,
newest point, age against the RPO, next run, failures), the counts, the jobs, the errors.
Pure functions of what the parts hold; nothing here changes them."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from policies.model import Policy
from protector.daemon.metrics import Metrics
from protector.daemon.planner import Planner
from protector.daemon.waiting import waiting_for

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


def job_key(runner: Any, key: str) -> str:
    """The key of the job a VM is part of: its own, or its vApp set's (a cluster scheduler
    queues one job for a whole set: ClusterJobQueue.member_of)."""
    return getattr(runner, "member_of", {}).get(key, key) if runner else key


def vm_rows(
    nodes: list[Any],
    plan: Planner,
    runner: Any,
    shown_path: Callable[[Any], str] = lambda node: node.path,
) -> list[dict[str, Any]]:
    """One light row per VM, unsorted: what the counts, the metrics, paging and filtering
    need (path, policy, state, breach, newest point, error). The rest of a row (why it
    waits, progress, next run: the planner's reasoning, most of the cost) is built by
    complete() for the rows shown, so a page at 50,000 VMs does not reason about 50,000
    VMs. A row holds no reference to the planner (a dict of atomic values is not tracked by
    the garbage collector, so 50,000 rows add nothing to its work). `shown_path` gives the
    path to show (with several vCenters it names the VM's: `east:/DC0/vm/web-1`, which the
    metrics' `vm` label carries too)."""
    now = datetime.now(UTC)
    with _no_gc():
        return [_light_row(node, plan, runner, now, shown_path) for node in nodes]


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a burst of rows is built. The rows hold only
    strings, numbers and shared tuples, so CPython leaves them untracked and they never count
    towards the collector's thresholds; what the build itself allocates does, and at 50,000
    rows the collections it set off walked the daemon's whole heap (the inventory tree):
    about 40 % of a /status request, measured with bench_status.py."""
    global _pauses
    with _pause_lock:
        if _pauses == 0:
            _pause_was_enabled[0] = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _pause_was_enabled[0]:
                gc.enable()


# Overlapping pauses (the status page and a metrics scrape, or another thread) nest: the
# collector comes back on when the last one ends, and only if it was on before the first.
_pause_lock = threading.Lock()
_pauses = 0
_pause_was_enabled = [True]


def _light_row(
    node: Any, plan: Planner, runner: Any, now: datetime, shown_path: Callable[[Any], str]
) -> dict[str, Any]:
    key = node.identity
    policy = plan.policy_of(key)
    st = plan.state.get(key)
    age = (now - st.newest_good).total_seconds() if st and st.newest_good else None
    rpo = policy.schedule.rpo.total_seconds() if policy else None
    breached = rpo is not None and (age is None or age > rpo)
    return {
        "path": shown_path(node),
        "name": node.name,
        "moref": node.moref,
        "identity": key,
        "policy": policy.name if policy else None,
        "conflict": plan.conflicts.get(key, ()),  # a tuple: shown as a JSON list
        "state": state_of(key, policy, age, breached, plan, runner),
        "newest_point": st.newest_point if st else None,
        "newest_point_at": st.newest_good.isoformat() if st and st.newest_good else None,
        "age_seconds": age,
        "rpo_seconds": rpo,
        "breached": breached,
        "last_error": st.last_error if st else "",
        "consecutive_failures": runner.consecutive_failures.get(key, 0),
    }


def complete(rows: list[dict[str, Any]], plan: Planner, runner: Any) -> list[dict[str, Any]]:
    """The full rows of `rows` (light rows vm_rows built from this plan and runner): each
    adds its age and RPO in words, its next run, retry time, why it is in its state, and a
    running job's progress."""
    now = datetime.now(UTC)
    out = []
    for light in rows:
        key, state, failures = light["identity"], light["state"], light["consecutive_failures"]
        running = runner.running.get(job_key(runner, key)) if runner else None
        out.append(
            {
                **light,
                "age_text": format_age(light["age_seconds"]),
                "rpo_text": format_age(light["rpo_seconds"]),
                "next_run": plan.due[key].isoformat() if key in plan.due else None,
                "retry_at": _iso(runner.cooldown_until.get(key)) if runner else None,
                "why": why_text(key, state, plan.policy_of(key), plan, runner, now, failures),
                "progress": progress_of(running[1]) if running else None,
            }
        )
    return out


# The detail of a row whose VM left the inventory between paging and completion.
GONE_DETAIL: dict[str, Any] = {
    "age_text": "",
    "rpo_text": "",
    "next_run": None,
    "retry_at": None,
    "why": "no longer in the inventory",
    "progress": None,
}


def completed(
    status: dict[str, Any], complete: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> dict[str, Any]:
    """`status` (a status_view) with every VM's full row (by `complete`), by path."""
    rows = sorted(status.get("vms", []), key=lambda v: v["path"])
    return {**status, "vms": complete(rows)}


def vm_status(
    nodes: list[Any],
    plan: Planner,
    runner: Any,
    shown_path: Callable[[Any], str] = lambda node: node.path,
) -> list[dict[str, Any]]:
    """Every VM's full row, by path (vm_rows, then complete)."""
    rows = sorted(vm_rows(nodes, plan, runner, shown_path), key=lambda v: v["path"])
    return complete(rows, plan, runner)


def why_text(
    key: str,
    state: str,
    policy: Policy | None,
    plan: Planner,
    runner: Any,
    now: datetime,
    failures: int,
) -> str:
    """Why the VM is in its state, in words: which policies conflict, that none selects it,
    what a queued job waits for, or why the next scheduled run is not now (the planner's
    own reasoning, waiting.wait_reason)."""
    if state == "conflict":
        names = " and ".join(plan.conflicts.get(key, ()))
        return f"policies {names} select it with equal priority; none applies"
    if policy is None:
        return "no policy selects it"
    if state == "running":
        return ""
    queued = runner.queued.get(job_key(runner, key))
    if queued is not None:
        held = runner.held_by(queued) if hasattr(runner, "held_by") else ""
        return f"queued ({queued.reason})" + (f"; waits for the {held}" if held else "")
    if key in runner.retry_timers:
        return "retrying after a failed attempt"
    return waiting_for(plan, key, now, failures) or "due now"


def progress_of(rec: Any) -> dict[str, Any]:
    """A running job's progress: its phase and bytes read of those planned."""
    total = rec.total_bytes
    return {
        "phase": rec.phase or "starting",
        "bytes_done": rec.read_bytes,
        "bytes_total": total,
        "percent": round(100 * rec.read_bytes / total, 1) if total else None,
    }


def gone_vms(present: set[str], state: dict[str, Any]) -> list[dict[str, Any]]:
    """VMs no longer in vCenter whose restore points the repository still holds."""
    return [
        {
            "identity": key,
            "points": st.points,
            "newest_point": st.newest_point,
            "newest_point_at": st.newest_good.isoformat() if st.newest_good else None,
        }
        for key, st in sorted(state.items())
        if key not in present and st.points
    ]


def repository_view(
    state: dict[str, Any],
    last_prune: dict[str, Any] | None,
    last_verify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cheap repository figures from what the daemon holds (no repository walk per request):
    the restore points per the manifests read at start and since, the last prune, and what
    the last `vigil verify` of the whole repository found (from the state directory)."""
    view: dict[str, Any] = {
        "points": sum(st.points for st in state.values()),
        "vms_with_points": sum(1 for st in state.values() if st.points),
        "last_prune": (last_prune or {}).get("at"),
    }
    if last_verify:
        how = "read data" if last_verify.get("read_data") else "structure"
        found = "OK" if last_verify.get("ok") else f"DAMAGED ({last_verify.get('problems')})"
        view["last_verify"] = f"{last_verify.get('at')} {found}, {how}"
        view["last_verify_ok"] = bool(last_verify.get("ok"))
    return view


def repositories_view(
    cfg: Any,
    primary: dict[str, Any],
    copies: list[dict[str, Any]],
    figures: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One entry per repository: the primary ([repository]) and each copy ([copies.NAME],
    with the copier's view of it), each with the figures of its last background walk."""
    rc = cfg.repository
    out: list[dict[str, Any]] = [
        {
            "where": rc.where,
            "name": "",
            "role": "primary",
            "location": rc.location,
            "object_lock_days": rc.object_lock_days,
            **primary,
        }
    ]
    for c in copies:
        crc = cfg.copies[c["name"]]
        out.append(
            {
                "where": crc.where,
                "role": "copy",
                **c,
                "object_lock_days": crc.object_lock_days,
                **figures.get(c["name"], {}),
            }
        )
    return out


def unlocked_text(repo: dict[str, Any]) -> str:
    """The oldest point no longer under object lock, in words ("n/a" without a lock)."""
    if not repo.get("object_lock_days"):
        return "n/a (no object lock)"
    if "unlocked_points" not in repo:
        return "not measured yet"
    oldest = repo.get("oldest_unlocked")
    if not oldest:
        return "none (every point locked)"
    return (
        f"{oldest['point']} (unlocked since {oldest['unlocked_since'][:10]}; "
        f"{repo['unlocked_points']} point(s) unlocked)"
    )


# Problems first: what needs an admin at the top of every page.
STATE_RANK = {
    "failing": 0,
    "breached": 1,
    "conflict": 2,
    "running": 4,
    "queued": 5,
    "due": 6,
    "unprotected": 7,
    "ok": 8,
}
PROBLEMS = ("failing", "breached", "conflict")
PER_PAGE = 100
MAX_PER_PAGE = 1000


def rank(vm: dict[str, Any]) -> int:
    r = STATE_RANK.get(vm["state"], 3)
    return min(r, 1) if vm.get("breached") else r


def select_vms(
    vms: list[dict[str, Any]],
    *,
    page: int = 1,
    per_page: int = PER_PAGE,
    state: str = "",
    q: str = "",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of VMs, problems first, then by path; `state` keeps one state ("problems"
    for failing, breached and conflict; "breached" also matches the breach flag), `q` the
    VMs whose path, policy or error contains it (case-insensitive). Returns the page and
    what the page shows (numbers for the paging links)."""
    per_page = max(1, per_page)
    sel = vms
    if state == "problems":
        sel = [v for v in sel if v["state"] in PROBLEMS or v.get("breached")]
    elif state == "breached":
        sel = [v for v in sel if v.get("breached")]
    elif state:
        sel = [v for v in sel if v["state"] == state]
    if q:
        needle = q.casefold()
        sel = [
            v
            for v in sel
            if needle in v["path"].casefold()
            or needle in (v.get("policy") or "").casefold()
            or needle in (v.get("last_error") or "").casefold()
        ]
    sel = sorted(sel, key=lambda v: (rank(v), v["path"]))
    pages = max(1, -(-len(sel) // per_page))
    page = max(1, min(page, pages))
    info = {
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "matching": len(sel),
        "total": len(vms),
        "state": state,
        "q": q,
    }
    return sel[(page - 1) * per_page : page * per_page], info


def state_of(
    key: str, policy: Policy | None, age: float | None, breached: bool, plan: Planner, runner: Any
) -> str:
    """One word per VM; an RPO breach is also a flag of its own, whatever the state."""
    if job_key(runner, key) in runner.running:
        return "running"
    if key in runner.failures:
        return "failing"  # retries used up; cooling down or trying again
    if job_key(runner, key) in runner.queued or key in runner.retry_timers:
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
