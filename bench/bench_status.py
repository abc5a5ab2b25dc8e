"""The status page at scale: the time to answer /status (HTML) and /status.json (one page of
VMs, problems first) and /status.json?per_page=all with N VMs, over HTTP from a StatusServer
on loopback; the view data is built synthetically, as bench_metrics.py does. Writes
bench/results/status.json. A timing goal, not a test: at most 0.5 s at 10,000 VMs.

    .venv/bin/python bench/bench_status.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from policies.reload import PolicyStore
from protector.daemon.jobs import JobRunner, Limits
from protector.daemon.metrics import Metrics
from protector.daemon.planner import Planner
from protector.daemon.state import VmState
from protector.daemon.status_server import StatusServer
from protector.daemon.views import VM_STATES, state_counts, vm_status

ROOT = Path(__file__).resolve().parents[1]


def status(n: int) -> dict[str, Any]:
    vms = [
        {
            "path": f"/DC0/vm/prod/team-{i % 50}/vm-{i}",
            "name": f"vm-{i}",
            "policy": None if i % 10 == 0 else f"policy-{i % 7}",
            "conflict": [],
            "state": VM_STATES[i % len(VM_STATES)],
            "newest_point": None if i % 10 == 0 else f"p-{i}",
            "newest_point_at": None if i % 10 == 0 else "2026-12-01T00:00:00+00:00",
            "age_seconds": 3600.0,
            "age_text": "1h",
            "rpo_seconds": None if i % 10 == 0 else 86400.0,
            "rpo_text": "24h",
            "next_run": "2026-12-02T00:00:00+00:00",
            "breached": i % 97 == 0,
            "last_error": "datastore unreachable" if i % 101 == 0 else "",
            "why": "RPO not yet due; next backup 2026-12-02 00:00",
            "progress": None,
        }
        for i in range(n)
    ]
    return {
        "generated_at": "2026-12-01T12:00:00+00:00",
        "vcenter": "https://vc.example.com/sdk",
        "healthy": True,
        "counts": state_counts(vms),
        "breached": sum(1 for v in vms if v["breached"]),
        "vms": vms,
        "jobs": {"running": [], "queued": [], "recent": [], "outcomes": {}, "coalesced": 0},
        "gone": [],
        "repository": {"points": n * 3},
        "prune": None,
        "dispatch_paused": None,
        "errors": [],
        "policy_errors": [],
    }


async def measure(n: int) -> dict[str, Any]:
    data = status(n)
    srv = StatusServer(lambda: data, lambda: True, Metrics())
    await srv.start("127.0.0.1:0")
    row: dict[str, Any] = {"vms": n}
    try:
        async with aiohttp.ClientSession() as http:
            for name, path in (
                ("html_s", "/status"),
                ("html_filtered_s", "/status?state=problems&q=team-7&page=2"),
                ("json_s", "/status.json"),
                ("json_all_s", "/status.json?per_page=all"),
            ):
                times, size = [], 0
                for _ in range(5):
                    start = time.perf_counter()
                    async with http.get(f"http://127.0.0.1:{srv.port}{path}") as r:
                        body = await r.read()
                        assert r.status == 200
                    times.append(time.perf_counter() - start)
                    size = len(body)
                row[name] = round(statistics.median(times), 3)
                row[name.replace("_s", "_kb")] = round(size / 1e3, 1)
    finally:
        await srv.stop()
    return row


def view_seconds(n: int, tmp: Path) -> float:
    """The daemon's own view (views.vm_status: state, why each VM waits via the planner's
    wait_reason, progress) for N VMs under three policies, one with a closed window: what each
    /status request computes before paging."""
    (tmp / "p.toml").write_text(
        "".join(
            f'[[policy]]\nname = "p{k}"\npriority = {k}\n[policy.select]\nnames = ["*-{k}*"]\n'
            f'[policy.schedule]\nrpo = "24h"\n{window}[policy.retention]\nkeep_last = 3\n'
            for k, window in ((0, 'window = "03:00-03:30"\n'), (1, ""), (2, ""))
        )
    )
    plan = Planner({}, None, UTC)
    plan.policies = PolicyStore(tmp)

    async def run(_req: Any, _rec: Any) -> None:
        return None

    plan.jobs = runner = JobRunner(run, Limits())
    nodes = []
    now = datetime.now(UTC)
    for i in range(n):
        key = f"vc/{i}"
        nodes.append(
            SimpleNamespace(identity=key, path=f"/DC0/vm/vm-{i}", name=f"vm-{i}", moref=f"vm-{i}")
        )
        plan.winners[key] = None if i % 10 == 0 else f"p{i % 3}"
        if i % 4:
            plan.state[key] = VmState(now - timedelta(hours=i % 30), f"p-{i}", 3)
        if i % 500 == 0:
            plan.conflicts[key] = ("p1", "p2")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        vm_status(nodes, plan, runner)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    rows = [asyncio.run(measure(n)) for n in (100, 1_000, 10_000)]
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            row["view_s"] = view_seconds(row["vms"], Path(tmp))
    for row in rows:
        print(row)
    out = ROOT / "bench" / "results" / "status.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
