"""The daemon's offsite copies (`copy_to`, `[policy.copy_retention]`) with real parts: a
simulator VM, a local primary repository, a local copy and an S3 copy on SeaweedFS.

A point made while no daemon runs reaches the copies once one starts (found by comparing,
not remembered); each new point follows after its commit; a copy whose S3 server is down
shows as failing on the status page while the other copy carries on, and catches up when
the server is back; the copies keep their own retention count (the locked S3 copy keeps
what its object lock holds); and a configuration whose [repository] is a copy restores
the newest point byte-exact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.config import load_config
from protector.daemon.daemon import Daemon
from protector.devtools.demo import flat_url, get_disk, put_disk
from protector.repoaccess import open_configured
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer

from .helpers import create_vm, find, load, session_for, wait_for, write_config

pytestmark = pytest.mark.slow

VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")
BUCKET = "vigil-copies"
MIB = 1024 * 1024

POLICY = """
[[policy]]
name = "web"
priority = 10
copy_to = ["home", "cloud"]
[policy.select]
names = ["web-1"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 3
[policy.copy_retention]
keep_last = 1
"""


def copy_tables(weed: SeaweedServer, prefix: str) -> str:
    return (
        '[copies.home]\npath = "home"\n'
        f'[copies.cloud]\nurl = "s3://{BUCKET}/{prefix}"\npassphrase_env = "VIGIL_TEST_CLOUD"\n'
        f'[copies.cloud.s3]\nendpoint = "{weed.endpoint}"\n'
        'access_key_env = "VIGIL_TEST_S3_ACCESS"\nsecret_key_env = "VIGIL_TEST_S3_SECRET"\n'
        "object_lock_days = 1\nmax_attempts = 2\nconnect_timeout = 2\nread_timeout = 10\n"
    )


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket(BUCKET, lock=True)
        yield server


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_CLOUD", "cloud passphrase")
    monkeypatch.setenv("VIGIL_TEST_S3_ACCESS", ACCESS_KEY)
    monkeypatch.setenv("VIGIL_TEST_S3_SECRET", SECRET_KEY)


async def vigil(cfg: Path, *args: str) -> Any:
    proc = await anyio.run_process(
        [VIGIL, "--config", str(cfg), *args], check=False, env=dict(os.environ)
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, (args, out, err[-3000:])
    return json.loads(out) if "--json" in args else out


@contextlib.asynccontextmanager
async def running(cfg_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load(cfg_path))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_for(lambda: daemon.ready.is_set() or task.done(), 30, "the daemon to sync")
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


def copy_view(daemon: Daemon, name: str) -> dict[str, Any]:
    return next(c for c in daemon.status_data()["copies"] if c["name"] == name)


def point_ids(repo: Any) -> list[str]:
    return sorted(m.point_id for m in repo.manifests())


@pytest.mark.usefixtures("s3_env")
async def test_daemon_copies_each_new_point_keeps_copy_retention_and_restores_from_copies(
    tmp_path: Path, vcsim_fresh: Any, weed: SeaweedServer
) -> None:
    sim = vcsim_fresh
    cfg_path = write_config(tmp_path, sim, POLICY, daemon="failure_cooldown_max = 4")
    base = cfg_path.read_text()
    cfg_path.write_text(base + copy_tables(weed, "daemon"))
    await vigil(cfg_path, "init", "--copy", "home", "--encryption", "none")
    await vigil(cfg_path, "init", "--copy", "cloud")
    cfg = load_config(cfg_path)
    home = open_configured(cfg.copies["home"], cfg)
    cloud = open_configured(cfg.copies["cloud"], cfg)

    s = await session_for(sim)
    vm = await create_vm(s, "/DC0/vm", "web-1", disk_kb=4096)
    datas = [random.Random(i).randbytes(4 * MIB) for i in range(3)]
    await put_disk(s, await flat_url(s, vm), datas[0])
    # A point made while no daemon runs: the daemon finds it missing in both copies.
    await vigil(cfg_path, "backup", "web-1")
    try:
        async with running(cfg_path) as daemon:
            assert daemon.repo is not None
            [first] = point_ids(daemon.repo)
            for repo in (home, cloud):
                await wait_for(lambda r=repo: point_ids(r) == [first], 30, "the first copy")
            await wait_for(
                lambda: copy_view(daemon, "cloud")["points_waiting"] == 0, 10, "nothing waiting"
            )

            # The S3 copy's server dies: its copy fails (shown), the local copy carries on.
            weed.kill()
            await put_disk(s, await flat_url(s, vm), datas[1])
            assert daemon.backup_now(vm._moId, "test")
            await wait_for(lambda: len(point_ids(daemon.repo)) == 2, 30, "the second point")
            second = point_ids(daemon.repo)[1]
            await wait_for(lambda: second in point_ids(home), 30, "the local copy")
            failing = await wait_for(
                lambda: (c := copy_view(daemon, "cloud"))["state"] == "failing" and c, 60, "fail"
            )
            assert failing["error"] and failing["consecutive_failures"] >= 1
            assert any("copy to cloud" in e for e in daemon.status_data()["errors"])
            await wait_for(lambda: copy_view(daemon, "home")["state"] == "ok", 30, "home idle")

            # Back up again: retried with back-off, the copy catches up with both points.
            weed.start()
            await put_disk(s, await flat_url(s, vm), datas[2])
            assert daemon.backup_now(vm._moId, "test")
            await wait_for(lambda: len(point_ids(daemon.repo)) == 3, 30, "the third point")
            points = point_ids(daemon.repo)
            for repo in (home, cloud):
                await wait_for(lambda r=repo: point_ids(r) == points, 60, "every point copied")
            await wait_for(lambda: copy_view(daemon, "cloud")["state"] == "ok", 30, "recovered")
            assert copy_view(daemon, "cloud")["error"] == ""

            # Retention: the primary keeps 3, the local copy 1; the locked copy keeps its
            # points until their object lock expires (a day), like the primary's prune.
            await wait_for(daemon.in_sync, 10, "the inventory in sync")
            await daemon.prune_now()
            assert point_ids(daemon.repo) == points
            assert point_ids(home) == points[-1:]
            assert {t.point_id for t in home.tombstones()} == set(points[:2])
            assert point_ids(cloud) == points
            pruned = copy_view(daemon, "cloud")["last_prune"]
            assert pruned["outcome"] == "done" and pruned["kept_locked"] >= 2
            assert copy_view(daemon, "home")["last_prune"]["points_deleted"] == 2
    finally:
        await s.close()

    # A configuration whose [repository] is a copy verifies and restores from it.
    head = base.split("[repository]")[0] + base.split('path = "repo"\n', 1)[1]
    for name, table in (
        ("home", '[repository]\npath = "home"\n'),
        ("cloud", copy_tables(weed, "daemon").split("[copies.cloud]")[1]),
    ):
        toml = tmp_path / f"{name}.toml"
        table = (
            table
            if name == "home"
            else "[repository]" + table.replace("copies.cloud", "repository")
        )
        toml.write_text(head + table)
        await vigil(toml, "verify", "--read-data")
        await vigil(toml, "restore", points[-1], "--new-name", f"from-{name}", "--verify")
        s = await session_for(sim)
        try:
            restored = await find(s, f"/DC0/vm/from-{name}")
            got = await get_disk(s, await flat_url(s, restored))
            assert got[: len(datas[2])] == datas[2]
        finally:
            await s.close()
