"""The database restarted mid-run: the elector steps down and wins again with a new epoch,
the worker reconnects and its interrupted job is done, node heartbeats resume."""

from __future__ import annotations

import asyncio

import pytest
from cluster_helpers import defer, job_status, nodes, rows, set_epoch, start_worker, wait_for
from procs import create_test_tables, open_gate

from cluster.election import LeaderElector
from cluster.queue import BackupJob, prepare_database

pytestmark = pytest.mark.timeout(240)


async def test_database_restart_mid_run(pg_private, tmp_path):
    url = pg_private.url()
    await prepare_database(url)
    create_test_tables(url)
    set_epoch(url, "vc-2", 1)  # the jobs' vCenter; the elector leads vc-1
    elector = LeaderElector(url, "vc-1", "sched")
    running = asyncio.create_task(elector.run())
    assert await asyncio.wait_for(elector.wait_elected(), 30) == 1
    (first,) = await defer(
        url, BackupJob("vc-2", "vm-1", "h", ("ds",), 1, {"seconds": 0, "gate": "g"})
    )
    with nodes(tmp_path) as start:
        worker = start_worker(start, url, "w1", concurrency=1)
        await wait_for(lambda: rows(url, "SELECT 1 FROM test_events"), 60, "vm-1 to start")

        await asyncio.to_thread(pg_private.restart)

        # The elector noticed (its term ended) and leads again under a new epoch.
        assert await asyncio.wait_for(_new_term(elector, 1), 60) >= 2
        open_gate(url, "g")
        (second,) = await defer(url, BackupJob("vc-2", "vm-2", "h", ("ds",), 1, {"seconds": 0.1}))
        await wait_for(
            lambda: {job_status(url)[first][0], job_status(url)[second][0]} == {"succeeded"},
            120,
            "the interrupted job and a new one to succeed after the restart",
        )
        assert worker.proc.poll() is None  # the same process, reconnected
        await wait_for(
            lambda: rows(
                url,
                "SELECT 1 FROM vigil_cluster_nodes WHERE node='w1' "
                "AND last_seen > now() - interval '5 seconds'",
            ),
            30,
            "the worker's node heartbeat to resume",
        )
    assert sorted(rows(url, "SELECT vm FROM test_points")) == [("vm-1",), ("vm-2",)]
    elector.stop()
    await running


async def _new_term(elector: LeaderElector, old: int) -> int:
    while True:
        epoch = await elector.wait_elected()
        if epoch > old:
            return epoch
        await asyncio.sleep(0.1)
