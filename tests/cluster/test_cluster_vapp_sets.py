"""vApp sets in cluster mode, below the daemon: the scheduler's routing of member requests
to one set job (pure), the set job's lock, mutexes and slots, the moot-set rule, the
scheduler's queue on a real PostgreSQL, and workers (real processes) that never run a set
job and a member's own job at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cluster_helpers import defer, job_status, nodes, rows, set_epoch, start_worker, wait_for
from procs import create_test_tables, open_gate

from cluster import slots
from cluster.queue import BACKUP_TASK, BackupJob, lock_for, make_app, prepare_database, set_key
from protector.daemon.cluster_queue import (
    ClusterJobQueue,
    Route,
    SetMember,
    SetUnit,
    job_of_set,
    route,
)
from protector.daemon.clustered import moot_set
from protector.daemon.jobs import JobRequest
from repository import Manifest, VmIdentity

pytestmark = pytest.mark.timeout(180)

SET = set_key("vc-1", "resgroup-v7")


def member(i: int, host: str = "host-1", ds: str = "ds-1", point: str = "") -> SetMember:
    return SetMember(f"vc-1/u{i}", f"vm{i}", f"vm-{i}", f"/DC0/vm/shop/vm{i}", host, (ds,), point)


UNIT = SetUnit(SET, "resgroup-v7", "/DC0/host/C0/Resources/shop", (member(1), member(2)))


def request(key: str, reason: str = "RPO due") -> JobRequest:
    return JobRequest(key, key, "host-1", ("ds-1",), reason, policy="shop")


# -- pure: routing, the set's job, the moot rule ---------------------------------------


def test_route_defers_one_set_and_keeps_members_out_of_other_jobs():
    # The first member due: one job for the set.
    assert route("vc-1/u1", UNIT, set(), {}) is Route.SET
    # While it waits or runs, every member is busy (no job of its own, no second set).
    active = {SET}
    member_of = {"vc-1/u1": SET, "vc-1/u2": SET}
    assert route("vc-1/u2", UNIT, active, member_of) is Route.BUSY
    assert route("vc-1/u1", None, active, member_of) is Route.BUSY  # even if now VM-selected
    # A member the scheduler did not know when it deferred the set: covered by it.
    assert route("vc-1/u3", UNIT, active, member_of) is Route.JOIN
    # A VM whose own job waits does not start a set (the worker's mutex would wait anyway).
    assert route("vc-1/u1", UNIT, {"vc-1/u1"}, {}) is Route.BUSY
    # A VM no vApp selects: a job of its own, as before.
    assert route("vc-1/x", None, active, member_of) is Route.VM
    # The set's job ended (not active): its members route afresh.
    assert route("vc-1/u2", UNIT, set(), member_of) is Route.SET


def test_set_job_locks_the_vapp_and_holds_every_member_and_slot():
    u = SetUnit(SET, "resgroup-v7", UNIT.path, (member(2, "host-2", "ds-2"), member(1)))
    job = job_of_set(request("vc-1/u1"), u, "vc-1", 4, {})
    assert job.vm == SET and job.lock == "vapp:vc-1/vapp:resgroup-v7" == lock_for(SET)
    assert lock_for("vc-1/u1") == "vm:vc-1/u1"
    assert job.mutexes == ("vc-1/u1", "vc-1/u2")  # the members' own per-VM mutexes
    assert job.hosts == ("vc-1/host-1", "vc-1/host-2") and job.host == ""
    assert job.datastores == ("vc-1/ds-1", "vc-1/ds-2")
    assert job.epoch == 4 and job.vapp == "resgroup-v7"
    assert job.payload["paths"] == {"vm-1": "/DC0/vm/shop/vm1", "vm-2": "/DC0/vm/shop/vm2"}
    assert job.payload["known_points"] == {"vc-1/u1": "", "vc-1/u2": ""}
    # The job's arguments carry all of it; a VM job's stay as they were.
    assert BackupJob.from_args(job.to_args()) == job
    plain = BackupJob("vc-1", "vc-1/u1", "vc-1/host-1", ("vc-1/ds-1",), 4, {})
    assert "vapp" not in plain.to_args() and plain.mutexes == ("vc-1/u1",)
    # One slot per distinct host and datastore, taken all or none with the mutexes.
    needs = slots.slot_needs((job.host, *job.hosts), job.datastores, 2, 3)
    assert [(n.kind, n.name) for n in needs] == [
        ("host", "vc-1/host-1"),
        ("host", "vc-1/host-2"),
        ("datastore", "vc-1/ds-1"),
        ("datastore", "vc-1/ds-2"),
    ]


def manifest(point: str, vm: str, group: dict | None, minutes: int) -> Manifest:
    at = datetime(2026, 12, 6, 12, tzinfo=UTC) + timedelta(minutes=minutes)
    info = {"backup": {"group": group}} if group else {}
    return Manifest(
        point_id=point,
        vm=VmIdentity(vcenter_uuid="vc-1", instance_uuid=vm, moref=vm, name=vm),
        seq=1,
        prev_point_id=None,
        prev_hash=None,
        chunk_size=1 << 20,
        started_at=at,
        finished_at=at,
        committed_at=at,
        disks=(),
        config_info=info,
    )


def group(gid: str, moref: str = "resgroup-v7", members: tuple[str, ...] = ("a", "b")) -> dict:
    return {"id": gid, "kind": "vapp", "moref": moref, "members": list(members)}


def test_a_set_job_is_moot_only_after_a_newer_complete_set_of_its_vapp():
    new = [manifest("p-a2", "a", group("s2"), 5), manifest("p-b2", "b", group("s2"), 6)]
    # The plan knew older points: the newer complete set makes the job moot.
    assert moot_set(new, "resgroup-v7", ["p-a1", "p-b1"]) == "s2"
    assert moot_set(new, "resgroup-v7", ["", ""]) == "s2"
    # The plan was made with this very set: its RPO is due again, the job runs.
    assert moot_set(new, "resgroup-v7", ["p-a2", "p-b2"]) == ""
    # Another vApp's set, an incomplete set, points of two sets, a point of no set: run.
    assert moot_set(new, "resgroup-v9", ["", ""]) == ""
    abc = group("s3", members=("a", "b", "c"))
    incomplete = [manifest("p-a3", "a", abc, 7), manifest("p-b3", "b", abc, 8)]
    assert moot_set(incomplete, "resgroup-v7", ["", ""]) == ""
    mixed = [new[0], manifest("p-b3", "b", group("s3"), 8)]
    assert moot_set(mixed, "resgroup-v7", ["", ""]) == ""
    assert moot_set([new[0], manifest("p-b4", "b", None, 9)], "resgroup-v7", ["", ""]) == ""


# -- the scheduler's queue on a real PostgreSQL ----------------------------------------


async def test_members_share_one_set_job_and_each_is_booked_when_it_ends(pg_url):
    await prepare_database(pg_url)
    app = make_app(pg_url, node="test")
    finished: list[tuple[str, str]] = []
    refreshed: list[str] = []

    async def refresh(key: str) -> None:
        refreshed.append(key)

    def unit_of(req: JobRequest) -> SetUnit | None:
        return UNIT if req.vm_key in ("vc-1/u1", "vc-1/u2") else None

    async with app.open_async():
        q = ClusterJobQueue(
            app,
            "vc-1",
            3,
            on_finish=lambda req, rec: finished.append((req.vm_key, rec.outcome)),
            refresh=refresh,
            unit_of=unit_of,
        )
        assert q.submit(request("vc-1/u1", "came into scope"))
        assert not q.submit(request("vc-1/u2"))  # covered by the set's job
        assert q.busy("vc-1/u1") and q.busy("vc-1/u2") and q.coalesced == 1
        assert q.submit(request("vc-1/x"))  # a VM outside the vApp: a job of its own
        await wait_for(lambda: q.job_ids.get(SET) and q.job_ids.get("vc-1/x"), 10, "defers")
        jobs = await app.job_manager.list_jobs_async(task=BACKUP_TASK, status="todo")
        [setjob] = [j for j in jobs if j.id == q.job_ids[SET]]
        assert setjob.lock == setjob.queueing_lock == lock_for(SET)
        kw = setjob.task_kwargs
        assert kw["vm"] == SET and kw["members"] == ["vc-1/u1", "vc-1/u2"] and kw["epoch"] == 3
        assert kw["payload"]["reason"] == "came into scope"
        # The set's job ends (cancelled here): each member's points are re-read and each
        # member's plan moves on; the members are free again.
        q.forget("vc-1/x")
        await app.job_manager.cancel_job_by_id_async(q.job_ids[SET])
        for _ in range(50):
            await q.poll()
            if len(finished) == 3:
                break
            await asyncio.sleep(0.1)
        assert sorted(finished) == [
            ("vc-1/u1", "cancelled"),
            ("vc-1/u2", "cancelled"),
            ("vc-1/x", "cancelled"),
        ]
        assert sorted(refreshed) == ["vc-1/u1", "vc-1/u2", "vc-1/x"]
        assert not q.busy("vc-1/u1") and not q.busy("vc-1/u2") and not q.member_of
        # Nothing deferred twice: one set job, one VM job.
        assert q.deferred == 2
        await q.stop()


# -- workers: a set job and a member's own job never run at once -----------------------


async def test_a_member_job_waits_for_its_set_job_on_another_worker(pg_url, tmp_path):
    url = pg_url
    await prepare_database(url)
    create_test_tables(url)
    set_epoch(url, "vc-1", 1)
    gate = {"seconds": 0, "gate": "set"}
    members = ("vc-1/u1", "vc-1/u2")
    setjob = BackupJob("vc-1", SET, "", ("ds-1",), 1, gate, "resgroup-v7", members, ("host-1",))
    with nodes(tmp_path) as start:
        for name in ("w1", "w2"):
            start_worker(start, url, name, concurrency=2)
        [set_id] = await defer(url, setjob)
        await wait_for(
            lambda: rows(url, "SELECT 1 FROM test_events WHERE vm = %s", (SET,)), 60, "the set"
        )
        # The member's own job (say, queued by a manual backup) and an unrelated VM's.
        member_id, other_id = await defer(
            url,
            BackupJob("vc-1", "vc-1/u2", "host-1", ("ds-1",), 1, {"seconds": 0}),
            BackupJob("vc-1", "vc-1/x", "host-1", ("ds-1",), 1, {"seconds": 0}),
        )
        await wait_for(lambda: job_status(url).get(other_id, ("",))[0] == "succeeded", 60, "x")
        # A free worker took the member's job, which waits on the member's mutex.
        taken = ("doing", "succeeded")  # succeeded: it ran at once, which the check below sees
        await wait_for(lambda: job_status(url).get(member_id, ("",))[0] in taken, 60, "taken")
        await asyncio.sleep(1.0)  # room for a wrong start; the event rows would show it
        started = rows(url, "SELECT 1 FROM test_events WHERE vm = 'vc-1/u2'")
        assert started == [], "the member's job started while its set's job ran"
        open_gate(url, "set")
        await wait_for(
            lambda: all(job_status(url)[j][0] == "succeeded" for j in (set_id, member_id)),
            60,
            "both jobs",
        )
    [(set_end,)] = rows(url, "SELECT at FROM test_events WHERE vm = %s AND kind = 'end'", (SET,))
    [(member_start,)] = rows(
        url, "SELECT at FROM test_events WHERE vm = 'vc-1/u2' AND kind = 'start'"
    )
    assert member_start >= set_end
