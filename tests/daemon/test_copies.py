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
import shutil
import socket
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protector.config import load_config
from protector.daemon.daemon import Daemon
from protector.daemon.repo_size import point_time
from protector.devtools.demo import flat_url, get_disk, put_disk
from protector.repoaccess import open_configured
from tests.notify.test_sender import Webhook
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer

from .helpers import create_vm, find, load, session_for, wait_for, write_config

pytestmark = pytest.mark.slow

VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")
BUCKET = "vigil-copies"
MIB = 1024 * 1024
PROMTOOL = shutil.which("promtool")  # Debian's prometheus package (make apt)

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


async def vigil(cfg: Path, *args: str, code: int = 0) -> Any:
    proc = await anyio.run_process(
        [VIGIL, "--config", str(cfg), *args], check=False, env=dict(os.environ)
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == code, (args, out, err[-3000:])
    return json.loads(out) if "--json" in args else out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(daemon: Daemon) -> str:
    assert daemon.status is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon.status.port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


def samples(text: str, name: str) -> dict[str, float]:
    """{repository label: value} of every sample called `name`."""
    return {
        s.labels["repository"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


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


def repo_view(daemon: Daemon, where: str) -> dict[str, Any]:
    return next(r for r in daemon.status_data()["repositories"] if r["where"] == where)


def copy_view(daemon: Daemon, name: str) -> dict[str, Any]:
    return repo_view(daemon, f"copies.{name}")


def point_ids(repo: Any) -> list[str]:
    return sorted(m.point_id for m in repo.manifests())


@pytest.mark.usefixtures("s3_env")
async def test_daemon_copies_each_new_point_keeps_copy_retention_and_restores_from_copies(
    tmp_path: Path, vcsim_fresh: Any, weed: SeaweedServer
) -> None:
    sim = vcsim_fresh
    hook = Webhook()
    cfg_path = write_config(
        tmp_path, sim, POLICY, daemon="failure_cooldown_max = 4\nretry_attempts = 2"
    )
    base = cfg_path.read_text().replace("127.0.0.1:0", f"127.0.0.1:{free_port()}")
    notify = f'[notify]\nurls = ["json://127.0.0.1:{hook.port}/v"]\ngroup_window = 0\n'
    cfg_path.write_text(base + copy_tables(weed, "daemon") + notify)
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
            # Once a retry did not help either, a notification (once per streak).
            await wait_for(lambda: hook.posts, 30, "the copy's notification")
            [(_, post)] = hook.posts
            assert post["title"] == "vigil: offsite copy failing: cloud"
            assert "copy to cloud" in post["message"]
            assert any("copy to cloud" in e for e in daemon.status_data()["errors"])
            # `vigil status` says so, and exits 1 like for a failing VM.
            text = await vigil(cfg_path, "status", code=1)
            assert f"copy cloud s3://{BUCKET}/daemon:" in text and "FAILING" in text
            assert "\n  error: " in text
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

            # Per repository: size and objects from a background walk (made to walk again
            # at every request here), nothing waiting, the oldest unlocked point.
            for cache in (daemon.repo_size, *daemon.copy_sizes.values()):
                cache.ttl = 0
            await wait_for(
                lambda: all(
                    "size_at" in r
                    and datetime.fromisoformat(r["size_at"]) >= point_time(points[-1])
                    for r in daemon.status_data()["repositories"]
                ),
                30,
                "every repository measured",
            )
            await wait_for(
                lambda: copy_view(daemon, "home")["points_waiting"] == 0, 10, "home has all"
            )
            status = await vigil(cfg_path, "status", "--json")
            repos = {r["where"]: r for r in status["repositories"]}
            assert list(repos) == ["repository", "copies.cloud", "copies.home"]
            for r in repos.values():
                assert r["size_bytes"] > 3 * 4 * MIB and r["objects"] > 12
            assert repos["copies.cloud"]["points_waiting"] == 0
            assert repos["copies.cloud"]["object_lock_days"] == 1
            assert repos["copies.cloud"]["unlocked_points"] == 0
            assert repos["copies.cloud"]["oldest_unlocked"] is None
            assert "unlocked_points" not in repos["repository"]
            text = await vigil(cfg_path, "status")
            assert "oldest unlocked point: n/a (no object lock)" in text
            assert "oldest unlocked point: none (every point locked)" in text
            assert "ok: 0 point(s) waiting to be copied" in text

            metrics = await scrape(daemon)
            size = samples(metrics, "vigil_repository_size_bytes")
            assert set(size) == {"repository", "copies.home", "copies.cloud"}
            assert size["copies.home"] == repos["copies.home"]["size_bytes"]
            assert samples(metrics, "vigil_repository_points_waiting") == {
                "copies.home": 0,
                "copies.cloud": 0,
            }
            assert samples(metrics, "vigil_repository_copy_failing")["copies.cloud"] == 0
            assert samples(metrics, "vigil_repository_copied_points_total")["copies.cloud"] == 3
            assert samples(metrics, "vigil_repository_unlocked_points") == {"copies.cloud": 0}
            if PROMTOOL is not None:
                proc = await asyncio.create_subprocess_exec(
                    PROMTOOL, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
                )
                out, _ = await proc.communicate(metrics.encode())
                assert proc.returncode == 0, out.decode()

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
        hook.close()

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
