"""What the status page explains, as pure functions: why a VM's next run is not now
(waiting.wait_reason, on the planner's inputs), which limit holds a queued job
(jobs.limit_reason), and the paging, filtering and problems-first order of the VM list
(views.select_vms)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from protector.daemon.jobs import JobRequest, Limits, limit_reason
from protector.daemon.state import VmState
from protector.daemon.views import gone_vms, select_vms
from protector.daemon.waiting import wait_reason

from .test_planner import NOW, policy


def test_a_closed_window_is_named_with_when_it_opens() -> None:
    p = policy(rpo_hours=24, window=(20, 22))
    why = wait_reason(None, p, NOW, tz=UTC)  # no point yet: due now, but the window is shut
    assert why == "backup window 20:00-22:00 closed; opens 2026-03-02 20:00", why
    deferred = wait_reason(VmState(NOW - timedelta(hours=1)), p, NOW, tz=UTC, deferred="moved")
    assert deferred.startswith("moved; backup window 20:00-22:00 closed"), deferred


def test_a_fresh_point_waits_for_the_rpo_and_a_due_vm_waits_for_nothing() -> None:
    p = policy(rpo_hours=24)
    why = wait_reason(VmState(NOW - timedelta(hours=1)), p, NOW, tz=UTC)
    assert why.startswith("RPO not yet due; next backup 2026-03-03 "), why
    assert wait_reason(VmState(NOW - timedelta(hours=30)), p, NOW, tz=UTC) == ""
    assert wait_reason(None, p, NOW, tz=UTC) == ""
    # Inside the window a due VM waits for nothing either.
    assert wait_reason(None, policy(window=(11, 13)), NOW, tz=UTC) == ""


def test_a_cooldown_after_failures_comes_first() -> None:
    p = policy(rpo_hours=24, window=(20, 22))
    until = (NOW + timedelta(minutes=30)).timestamp()
    why = wait_reason(None, p, NOW, tz=UTC, cooldown_until=until, failures=3)
    assert why == "cooldown after 3 failed attempts until 2026-03-02 12:30", why
    past = (NOW - timedelta(minutes=1)).timestamp()
    assert "cooldown" not in wait_reason(None, p, NOW, tz=UTC, cooldown_until=past)


def test_the_limit_a_queued_job_waits_for_is_named() -> None:
    req = JobRequest(
        vm_key="k", vm_name="db", host="host-1", datastores=("ds-1", "ds-2"), reason="RPO due"
    )
    limits = Limits(concurrent=4, per_host=2, per_datastore=1)
    assert limit_reason(req, 4, limits, {}, {}).startswith("concurrency limit: 4 of 4")
    assert "per-host limit: 2 backups running on host host-1" == limit_reason(
        req, 2, limits, {"host-1": 2}, {}
    )
    assert "on ds-2" in limit_reason(req, 1, limits, {"host-1": 1}, {"ds-2": 1})
    assert limit_reason(req, 1, limits, {"host-1": 1}, {"ds-1": 0}) == ""


def vm(i: int, state: str, *, breached: bool = False, policy: str = "gold") -> dict:
    return {"path": f"/DC0/vm/vm-{i:05}", "state": state, "breached": breached, "policy": policy}


def test_problems_come_first_and_pages_are_bounded() -> None:
    vms = [vm(i, "ok") for i in range(10_000)]
    vms[9_000] = vm(9_000, "failing")
    vms[5_000] = vm(5_000, "queued", breached=True)
    vms[7] = vm(7, "conflict", policy="")
    page, info = select_vms(vms, per_page=100)
    assert [v["path"][-5:] for v in page[:3]] == ["09000", "05000", "00007"]
    assert len(page) == 100 and info["pages"] == 100 and info["matching"] == 10_000
    last, info = select_vms(vms, page=1000, per_page=100)  # past the end: the last page
    assert info["page"] == 100 and last[-1]["path"].endswith("09999")


def test_filters_by_state_and_text() -> None:
    vms = [vm(i, "ok" if i % 3 else "failing") for i in range(30)]
    vms[4]["policy"] = "Silver"
    page, info = select_vms(vms, state="failing")
    assert info["matching"] == 10 and all(v["state"] == "failing" for v in page)
    page, _ = select_vms(vms, q="silver")
    assert [v["path"] for v in page] == ["/DC0/vm/vm-00004"]
    page, _ = select_vms(vms, state="problems", q="vm-0000")
    assert [v["path"][-1] for v in page] == ["0", "3", "6", "9"]
    assert select_vms(vms, state="breached")[1]["matching"] == 0


def test_gone_vms_are_those_with_points_but_no_node() -> None:
    state = {"a": VmState(NOW, "p1", 2), "b": VmState(NOW, "p2", 1), "c": VmState()}
    gone = gone_vms({"a"}, state)
    assert [g["identity"] for g in gone] == ["b"] and gone[0]["points"] == 1


async def test_the_repository_size_is_walked_in_the_background_once_per_ttl(tmp_path) -> None:
    import threading

    from protector.daemon.repo_size import RepoSizeCache
    from repository import Repository

    Repository.init(tmp_path / "repo")
    repo = Repository.open(tmp_path / "repo")
    expected = sum(info.size for info in repo.backend.list(""))
    release = threading.Event()
    walks = []

    class SlowBackend:
        """The repository's own backend, whose listing waits until the test says go: a
        walk that takes minutes on a large bucket, made deterministic."""

        def list(self, prefix: str):
            walks.append(prefix)
            assert release.wait(30), "the test never released the walk"
            return repo.backend.list(prefix)

    class SlowRepo:
        backend = SlowBackend()

    cache = RepoSizeCache(lambda: SlowRepo(), ttl=3600)
    assert cache.figure() == {}, "a request never waits for the walk"
    assert cache.figure() == {}, "one walk at a time: a second request starts none"
    release.set()
    walking = cache._task
    assert walking is not None
    await walking
    assert cache.figure()["size_bytes"] == expected > 0
    (tmp_path / "repo" / "extra").write_bytes(b"x" * 1000)
    assert cache.figure()["size_bytes"] == expected, "within the TTL: the cached figure"
    assert cache._task is None and walks == [""], "no second walk within the TTL"


async def test_a_page_completes_only_its_rows_and_they_match_the_full_view(tmp_path) -> None:
    """At 50,000 VMs a request cannot reason about every VM: the server pages light rows
    (views.vm_rows) and completes only those it shows. What it shows must be exactly the full
    rows (views.vm_status) of those VMs, with the counts of every VM."""
    from types import SimpleNamespace

    import aiohttp

    from policies.reload import PolicyStore
    from protector.daemon.jobs import JobRunner
    from protector.daemon.metrics import Metrics
    from protector.daemon.planner import Planner
    from protector.daemon.status_server import StatusServer
    from protector.daemon.views import complete, state_counts, vm_rows, vm_status

    (tmp_path / "p.toml").write_text(
        '[[policy]]\nname = "gold"\npriority = 1\n[policy.select]\nnames = ["*"]\n'
        '[policy.schedule]\nrpo = "24h"\nwindow = "03:00-03:30"\n'
        "[policy.retention]\nkeep_last = 3\n"
    )
    plan = Planner({}, None, UTC)
    plan.policies = PolicyStore(tmp_path)

    async def run(_req, _rec) -> None:
        return None

    plan.jobs = runner = JobRunner(run, Limits())
    now = datetime.now(UTC)
    nodes = []
    for i in range(250):
        key = f"vc/{i}"
        nodes.append(
            SimpleNamespace(
                identity=key, path=f"/DC0/vm/vm-{i:03}", name=f"vm-{i:03}", moref=f"vm-{i}"
            )
        )
        plan.winners[key] = None if i % 10 == 0 else "gold"
        if i % 4:
            plan.state[key] = VmState(now - timedelta(hours=i % 30), f"p-{i}", 3)
    completed: list[int] = []

    def completer(rows: list[dict]) -> list[dict]:
        completed.append(len(rows))
        return complete(rows, plan, runner)

    def view() -> dict:
        rows = vm_rows(nodes, plan, runner)
        return {
            "generated_at": now.isoformat(),
            "vcenter": "https://vc.example.com/sdk",
            "healthy": True,
            "counts": state_counts(rows),
            "breached": sum(1 for v in rows if v["breached"]),
            "vms": rows,
            "jobs": {"running": [], "queued": [], "recent": [], "outcomes": {}},
            "gone": [],
            "errors": [],
            "policy_errors": [],
        }

    full = {v["identity"]: v for v in vm_status(nodes, plan, runner)}
    srv = StatusServer(view, lambda: True, Metrics(), complete=completer)
    await srv.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{srv.port}/status.json?per_page=40&page=2"
            async with http.get(url) as r:
                body = await r.json()
            async with http.get(f"http://127.0.0.1:{srv.port}/status") as r:
                assert r.status == 200 and "vm-" in await r.text()
    finally:
        await srv.stop()
    assert completed == [40, 100]  # the JSON page, then the HTML page: never all 250
    assert body["counts"] == state_counts(list(full.values()))
    assert body["vms_page"]["matching"] == 250 and len(body["vms"]) == 40
    for row in body["vms"]:
        want = dict(full[row["identity"]], conflict=list(full[row["identity"]]["conflict"]))
        if want["age_seconds"] is not None:  # both measured against their own "now"
            assert abs(row.pop("age_seconds") - want.pop("age_seconds")) < 60
        assert row == want, row["path"]
    assert any(r["why"].startswith(("backup window", "RPO not yet due")) for r in body["vms"])
