"""The daemon's side of the cluster wiring, as pure logic and at the command line."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from chaos.helpers import run_vigil

from protector.cli.status import render_cluster
from protector.daemon.cluster_queue import active_by_vm, job_of
from protector.daemon.jobs import JobRequest
from protector.daemon.status_server import render_html


def test_job_carries_the_epoch_and_vcenter_scoped_slot_names():
    req = JobRequest("vc-1/vm-a", "web", "host-21", ("datastore-1", "datastore-2"), "moved")
    job = job_of(req, "vc-1", 7, {"path": "/DC0/vm/prod/web", "known_point": ""})
    assert (job.vcenter, job.vm, job.epoch) == ("vc-1", "vc-1/vm-a", 7)
    # Two vCenters may both have a host-21: the slots must not be shared between them.
    assert job.host == "vc-1/host-21"
    assert job.datastores == ("vc-1/datastore-1", "vc-1/datastore-2")
    assert job.payload["path"] == "/DC0/vm/prod/web" and job.payload["reason"] == "moved"
    assert job_of(JobRequest("vc-1/x", "x", "", (), "r"), "vc-1", 1, {}).host == ""


def _job(i, vc, vm, attempts=0):
    return SimpleNamespace(id=i, task_kwargs={"vcenter": vc, "vm": vm}, attempts=attempts)


def test_active_jobs_by_vm_prefer_the_running_one_and_skip_other_vcenters():
    listed = [
        ("todo", _job(3, "vc-1", "a")),
        ("doing", _job(2, "vc-1", "a", attempts=1)),
        ("todo", _job(4, "vc-2", "b")),
        ("todo", _job(5, "vc-1", "c")),
    ]
    assert active_by_vm(listed, "vc-1") == {"a": (2, "doing", 1), "c": (5, "todo", 0)}


CLUSTER = {
    "this_node": {"node": "w1", "role": "worker"},
    "nodes": [
        {"node": "s1", "role": "scheduler", "pid": 10, "alive": False, "last_seen_seconds": 40},
        {"node": "w1", "role": "worker", "pid": 11, "alive": True, "last_seen_seconds": 1},
    ],
    "leaders": [{"vcenter": "vc-1", "epoch": 3, "node": "s1", "alive": False}],
    "running_jobs": [{"job": 9, "node": "w1", "vm": "web<1>"}],
    "queued_jobs": 2,
}


def test_status_text_and_page_show_nodes_leader_and_running_jobs():
    text = "\n".join(render_cluster(CLUSTER))
    assert "s1" in text and "GONE" in text and "alive" in text
    assert "leader of vCenter vc-1: s1, epoch 3 (not seen" in text
    assert "running: web<1> on w1" in text and "queued in the cluster: 2" in text
    status = {
        "vcenter": "https://vc",
        "healthy": True,
        "generated_at": "now",
        "counts": {},
        "vms": [],
        "policy_errors": [],
        "errors": [],
        "jobs": {"running": [], "queued": [], "recent": []},
        "cluster": CLUSTER,
    }
    page = render_html(status)
    assert "Cluster (this node: w1, worker)" in page
    assert "web&lt;1&gt;" in page and "epoch 3" in page


def test_roles_need_a_cluster_table(tmp_path):
    (tmp_path / "policies.d").mkdir()
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[vcenter]\nurl = "http://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "X_PW"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "policies.d"\n'
    )
    out = run_vigil(cfg, "watch", "--role", "worker", timeout=60)
    assert out.returncode != 0
    assert "--role worker needs a [cluster] table" in out.stderr, out.stderr


# -- the scheduler's queue on a real PostgreSQL ------------------------------------------


async def test_cluster_queue_defers_with_the_epoch_and_follows_the_job(pg_url):
    from cluster.queue import BACKUP_TASK, make_app, prepare_database
    from protector.daemon.cluster_queue import ClusterJobQueue

    await prepare_database(pg_url)
    app = make_app(pg_url, node="test")
    finished: list[tuple[str, str]] = []
    refreshed: list[str] = []

    async def refresh(key: str) -> None:
        refreshed.append(key)

    async with app.open_async():
        q = ClusterJobQueue(
            app,
            "vc-1",
            3,
            on_finish=lambda req, rec: finished.append((req.vm_key, rec.outcome)),
            refresh=refresh,
            describe=lambda key: {"path": f"/DC0/vm/{key}", "known_point": ""},
        )
        req = JobRequest("vc-1/a", "a", "host-1", ("ds-1",), "came into scope")
        assert q.submit(req)
        assert not q.submit(JobRequest("vc-1/a", "a", "host-1", ("ds-1",), "again"))
        assert q.busy("vc-1/a") and q.coalesced == 1
        deadline = time.monotonic() + 30  # bounds on a broken queue, not timing goals
        while time.monotonic() < deadline:
            if q.job_ids.get("vc-1/a"):
                break
            await asyncio.sleep(0.1)
        [job] = await app.job_manager.list_jobs_async(task=BACKUP_TASK, status="todo")
        assert job.id == q.job_ids["vc-1/a"]
        assert job.task_kwargs["epoch"] == 3 and job.task_kwargs["vm"] == "vc-1/a"
        assert job.task_kwargs["host"] == "vc-1/host-1"
        assert job.task_kwargs["payload"]["path"] == "/DC0/vm/vc-1/a"
        # Still waiting: following it changes nothing, and a job seen in neither listing
        # (moving between todo and doing) is not taken for finished.
        await q.poll()
        assert await q._final_status("vc-1/a") is None
        assert q.busy("vc-1/a") and finished == []
        # The VM left every policy: its waiting job is cancelled, then seen as ended.
        q.forget("vc-1/a")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await q.poll()
            if finished:
                break
            await asyncio.sleep(0.1)
        assert finished == [("vc-1/a", "cancelled")]
        assert refreshed == ["vc-1/a"] and not q.busy("vc-1/a")
        await q.stop()
