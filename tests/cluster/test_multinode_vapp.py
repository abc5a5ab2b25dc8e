"""A vApp a policy selects, protected by real `vigil watch --role ...` processes (1
scheduler, 2 workers) on one simulator, one PostgreSQL and one repository: the vApp is
backed up as one set, by one job on one worker, exactly once within its RPO."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from chaos.helpers import wait_until
from multinode import DB_ENV, make_node, points

from protector.vappsets import group_of, vapp_sets
from repository import Repository

pytestmark = pytest.mark.slow

APP = "/DC0/host/DC0_C0/Resources/DC0_C0_APP0"
MEMBERS = ["DC0_C0_APP0_VM0", "DC0_C0_APP0_VM1"]


def write_vapp_policy(root: Path) -> None:
    pol = root / "policies.d"
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "shop.toml").write_text(
        f"""
[[policy]]
name = "shop"
priority = 10
[policy.select]
vapps = ["{APP}"]
[policy.schedule]
rpo = "1h"
[policy.retention]
keep_last = 10
[policy.backup]
quiesce = false
"""
    )


async def test_workers_back_up_a_selected_vapp_as_one_set_once_per_rpo(
    tmp_path, make_vcsim, pg_url
):
    sim = make_vcsim(args=["-app", "1"])
    os.environ[DB_ENV] = pg_url
    write_vapp_policy(tmp_path)
    sched = make_node(tmp_path, sim, "sched-1", "scheduler")
    workers = [make_node(tmp_path, sim, f"worker-{i}", "worker") for i in (1, 2)]
    nodes = [sched, *workers]
    for n in nodes:
        n.start()
    try:
        await wait_until(lambda: sorted(points(tmp_path / "repo")) == MEMBERS, 120, "2 points", 1)
        await wait_until(
            lambda: (
                (st := sched.status())
                and not st["cluster"]["running_jobs"]
                and not st["cluster"]["queued_jobs"]
                and not st["jobs"]["running"]
                and not st["jobs"]["queued"]
                and all(v["state"] == "ok" for v in st["vms"] if v["name"] in MEMBERS)
            ),
            60,
            "the set's job to end and both members to be ok on the scheduler",
            1,
        )
        # The scheduler's next tick would defer again if it found a member due.
        await asyncio.sleep(5)
        manifests = Repository.open(tmp_path / "repo").manifests()
        finished = [e for w in workers for e in w.events("job.finished")]
        deferred = sched.events("job.deferred")
    except AssertionError as exc:
        logs = "\n".join(f"--- {n.name} ---\n{n.tail()}" for n in nodes)
        raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for n in nodes:
            n.stop(timeout=30)
    # Exactly one point per member, both in one complete set of the vApp.
    assert sorted(m.vm.name for m in manifests) == MEMBERS
    [vset] = vapp_sets(manifests)
    assert vset.complete and vset.group["path"] == APP
    assert {group_of(m)["id"] for m in manifests} == {vset.id}  # type: ignore[index]
    assert all(m.policy == "shop" for m in manifests)
    # One job did it, on one worker: the set's, deferred once by the scheduler.
    assert [e["vm"] for e in deferred] == ["vApp DC0_C0_APP0"], deferred
    assert [(e["vm"], e["outcome"]) for e in finished] == [("vApp DC0_C0_APP0", "success")]
