"""Failures injected mid-backup: the repository's filesystem turns read-only, it fills up,
vCenter goes away while the disk is being read. Whatever happens, the snapshot is removed
(at once, or as soon as vCenter is back / by the next run), no partial point appears, the
points before stay intact, the repository verifies clean, and the next backup works."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repository import Repository

from .helpers import (
    MIB,
    Daemon,
    DataDisk,
    VcenterProxy,
    age_repository,
    connect,
    export_bytes,
    free_port,
    points_by_vm,
    prepare_disk,
    referenced_chunks,
    run_vigil,
    snapshots_left,
    start_vigil,
    stored_chunks,
    verify_ok,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

VM = "DC0_H0_VM0"
SIZE = 16 * MIB  # at 2 MiB/s per connection through the proxy: a 2 s read
READ_UNDER_WAY = 1 * MIB  # far more than the SOAP answers after the snapshot; far less than SIZE


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A filesystem of our own (to remount read-only or fill up); skips without the right."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root in a VM")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, opts: str, timeout: float = 10) -> None:
    """`mount -o remount,OPTS`; retried while a writer holds a file open (EBUSY)."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(
            ["mount", "-o", f"remount,{opts}", str(path)], capture_output=True, text=True
        )
        if r.returncode == 0:
            return
        assert time.monotonic() < deadline, f"remount {opts} {path}: {r.stderr}"
        time.sleep(0.01)


async def setup(
    make_vcsim: Any,
    tmp_path: Path,
    repo: Path,
    *,
    rate: float = 2 * MIB,
    port: int = 0,
    rpo: str = "4s",
) -> tuple[Any, VcenterProxy, DataDisk, Path]:
    sim = make_vcsim(args=[])
    proxy = VcenterProxy(sim.url, rate=rate).up()
    session = await connect(sim)
    try:
        disk = await prepare_disk(session, sim, VM, SIZE, random.Random(7))
    finally:
        await session.close()
    cfg = write_config(
        tmp_path, proxy.url, sim.password, [VM], repo=repo, status_port=port, rpo=rpo
    )
    return sim, proxy, disk, cfg


def backup_ok(cfg: Path) -> str:
    r = run_vigil(cfg, "backup", VM)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return r.stdout.split(":", 1)[0]


async def backup_failing_midway(
    cfg: Path,
    sim: Any,
    proxy: VcenterProxy,
    tmp_path: Path,
    inject: Any,
    prefix: tuple[str, ...] = (),
) -> tuple[int, str]:
    """`vigil backup` whose disk read is under way when `inject()` strikes; (rc, output).

    It strikes once the proxy has passed READ_UNDER_WAY bytes after the snapshot (the read
    has begun, whatever the machine's speed), and the read, throttled by the proxy, still
    has most of SIZE to go: no guessed delay that a slow or a fast run could miss."""
    log = tmp_path / f"backup-{time.monotonic_ns()}.log"
    p = start_vigil(cfg, "backup", VM, log=log, prefix=prefix)
    try:
        session = await connect(sim)
        try:
            deadline = time.monotonic() + 30
            while not await snapshots_left(session, [VM]):
                assert p.poll() is None, "the backup ended before the failure could strike"
                assert time.monotonic() < deadline, "the backup never took its snapshot"
                await asyncio.sleep(0.05)
        finally:
            await session.close()
        await until_reading(proxy, lambda: p.poll() is None)
        assert p.poll() is None, "the backup ended before the failure could strike"
        inject()
        rc = await asyncio.to_thread(p.wait, 90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return rc, log.read_text(errors="replace")


async def until_reading(proxy: VcenterProxy, alive: Callable[[], bool]) -> None:
    """Return once READ_UNDER_WAY more bytes have passed the proxy towards vigil: called
    after the backup's snapshot, that is its disk read under way."""
    reading_from = proxy.served + READ_UNDER_WAY
    deadline = time.monotonic() + 60
    while proxy.served < reading_from:
        assert alive(), "the backup ended before the failure could strike"
        assert time.monotonic() < deadline, "the backup never started reading the disk"
        await asyncio.sleep(0.02)


def check_points(repo_root: Path, disk: DataDisk, expected: dict[str, int], tmp: Path) -> None:
    repo = Repository.open(repo_root)
    assert sorted(repo.list_points()) == sorted(expected), "a point was lost or a partial one made"
    for pid, version in expected.items():
        assert export_bytes(repo, pid, tmp / "export.img") == disk.versions[version], pid


# Root ignores permission bits; without these capabilities it obeys them like any user.
NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--")


def chmod_tree(root: Path, writable: bool) -> None:
    subprocess.run(["chmod", "-R", "u+w" if writable else "a-w", str(root)], check=True)


async def test_repository_turning_read_only_mid_backup(make_vcsim: Any, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run vigil without DAC override")
    repo_root = tmp_path / "repo"
    sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root)
    try:
        expected = {backup_ok(cfg): 0}
        disk.write(random.Random(1).randbytes(SIZE))  # all new: a long read, many writes
        rc, out = await backup_failing_midway(
            cfg, sim, proxy, tmp_path, lambda: chmod_tree(repo_root, False), prefix=NO_DAC
        )
        assert rc == 1, out
        assert "Permission denied" in out, out
        assert "earlier restore points are intact" in out and "permissions" in out, out
        # vCenter was fine all along: the failing process removed its own snapshot.
        assert await snapshots_left(sim, [VM]) == {}
        check_points(repo_root, disk, expected, tmp_path)
        chmod_tree(repo_root, True)
        verify_ok(cfg)
        expected[backup_ok(cfg)] = len(disk.versions) - 1
        check_points(repo_root, disk, expected, tmp_path)
        _sweep_leaves_only_referenced(cfg, repo_root)
    finally:
        chmod_tree(repo_root, True)
        proxy.down()


async def test_repository_turning_read_only_under_the_daemon(
    make_vcsim: Any, tmp_path: Path
) -> None:
    """The daemon's backup fails, its snapshot goes, the daemon keeps running and backs the
    VM up once the repository is writable again."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run vigil without DAC override")
    repo_root = tmp_path / "repo"
    port = free_port()
    sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root, port=port, rpo="24h")
    d = Daemon(cfg, port, tmp_path / "daemon.log", prefix=NO_DAC)
    try:
        session = await connect(sim)
        try:
            await wait_until(lambda: d.running_jobs() > 0, 30, "the first backup")
            deadline = time.monotonic() + 30
            while not await snapshots_left(session, [VM]):
                assert time.monotonic() < deadline, "no backup snapshot"
                await asyncio.sleep(0.05)
        finally:
            await session.close()
        await until_reading(proxy, lambda: d.proc.poll() is None)
        chmod_tree(repo_root, False)
        await wait_until(lambda: "job.failed" in d.tail(100_000), 60, "the failing backup")
        assert await snapshots_left(sim, [VM]) == {}, d.tail()
        assert d.proc.poll() is None, d.tail()
        chmod_tree(repo_root, True)
        await wait_until(lambda: "backup.done" in d.tail(100_000), 60, "a backup once writable")
        assert await snapshots_left(sim, [VM]) == {}
        assert d.terminate() == 0, d.tail()
    finally:
        chmod_tree(repo_root, True)
        d.kill9()
        proxy.down()
    verify_ok(cfg)
    repo = Repository.open(repo_root)
    newest = points_by_vm(repo)[VM][-1]
    assert export_bytes(repo, newest, tmp_path / "export.img") == disk.current


async def test_repository_filling_up_mid_backup(make_vcsim: Any, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "48m") as mnt:
        repo_root = mnt / "repo"
        sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root)
        ballast = mnt / "ballast"
        try:
            expected = {backup_ok(cfg): 0}
            rng = random.Random(2)
            disk.write(rng.randbytes(SIZE))  # all new data: ~16 MiB to store
            # Deterministic: the disk is too small for this backup from the start (about
            # 4 MiB free), not filled up while the backup runs (that raced the backup).
            free = _free_bytes(mnt)
            fallocate = ["fallocate", "-l", str(free - 4 * MIB), str(ballast)]
            await asyncio.to_thread(subprocess.run, fallocate, check=True)
            used = _free_bytes(mnt)
            r = await asyncio.to_thread(run_vigil, cfg, "backup", VM)
            out = r.stdout + r.stderr
            assert r.returncode == 1, out
            assert "No space left on device" in out, out
            # The failed run gave back what it wrote, and says so: the repository is not
            # left full for every later backup (and prune's grace period is not needed).
            assert "the objects this run wrote were removed" in out, out
            assert _free_bytes(mnt) >= used - MIB
            assert await snapshots_left(sim, [VM]) == {}
            check_points(repo_root, disk, expected, tmp_path)
            ballast.unlink()
            verify_ok(cfg)
            expected[backup_ok(cfg)] = len(disk.versions) - 1
            check_points(repo_root, disk, expected, tmp_path)
            _sweep_leaves_only_referenced(cfg, repo_root)
        finally:
            proxy.down()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _sweep_leaves_only_referenced(cfg: Path, repo_root: Path) -> None:
    """Prune (grace over) removes the chunks and temp files the failed run left; the
    repository then holds exactly what its points reference and still verifies clean."""
    age_repository(repo_root, 2 * 3600)
    p = run_vigil(cfg, "prune")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    verify_ok(cfg)
    repo = Repository.open(repo_root)
    assert stored_chunks(repo) == referenced_chunks(repo)


async def test_vcenter_gone_mid_read_cli_backup(make_vcsim: Any, tmp_path: Path) -> None:
    """The CLI backup fails in bounded time; the next run, with vCenter back, removes the
    snapshot it could not, and backs up."""
    repo_root = tmp_path / "repo"
    sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root)
    try:
        expected = {backup_ok(cfg): 0}
        disk.write(random.Random(3).randbytes(SIZE))  # a long read
        started = time.monotonic()
        rc, out = await backup_failing_midway(cfg, sim, proxy, tmp_path, proxy.down)
        assert rc != 0, out
        assert time.monotonic() - started < 60, "a backup must not hang on a dead vCenter"
        assert await snapshots_left(sim, [VM]) == {VM: 1}, "the snapshot could not be removed"
        check_points(repo_root, disk, expected, tmp_path)
        proxy.up()
        verify_ok(cfg)
        expected[backup_ok(cfg)] = len(disk.versions) - 1
        assert await snapshots_left(sim, [VM]) == {}
        check_points(repo_root, disk, expected, tmp_path)
    finally:
        proxy.down()


async def test_vcenter_gone_mid_read_daemon(make_vcsim: Any, tmp_path: Path) -> None:
    """The daemon removes its snapshot as soon as vCenter is back, and the VM gets its point."""
    repo_root = tmp_path / "repo"
    port = free_port()
    sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root, port=port)
    d = Daemon(cfg, port, tmp_path / "daemon.log")
    try:
        session = await connect(sim)
        try:
            await wait_until(lambda: d.running_jobs() > 0, 30, "the first backup")
            deadline = time.monotonic() + 30
            while not await snapshots_left(session, [VM]):
                assert time.monotonic() < deadline, "no backup snapshot"
                await asyncio.sleep(0.05)
            await until_reading(proxy, lambda: d.proc.poll() is None)
            proxy.down()
            await asyncio.sleep(3)
            assert await snapshots_left(session, [VM]) == {VM: 1}
            assert d.proc.poll() is None, d.tail()
            assert not (repo_root / "manifests").exists() or not any(
                (repo_root / "manifests").iterdir()
            ), "a point from a backup whose reads failed"
            proxy.up()
            back = time.monotonic()
            deadline = back + 60
            while await snapshots_left(session, [VM]) or not _has_point(repo_root):
                assert time.monotonic() < deadline, f"not recovered:\n{d.tail()}"
                await asyncio.sleep(0.2)
        finally:
            await session.close()
        assert d.terminate() == 0, d.tail()
        verify_ok(cfg)
        repo = Repository.open(repo_root)
        [pid] = points_by_vm(repo)[VM][:1]
        assert export_bytes(repo, pid, tmp_path / "export.img") == disk.current
    finally:
        d.kill9()
        proxy.down()


def _has_point(repo_root: Path) -> bool:
    return (repo_root / "config").exists() and bool(Repository.open(repo_root).list_points())


async def test_vcenter_gone_at_snapshot_removal_daemon(make_vcsim: Any, tmp_path: Path) -> None:
    """vCenter vanishes just as the daemon removes its snapshot (the disks were read, the
    point gets committed): the snapshot must go as soon as vCenter is back, not a whole RPO
    later at the VM's next backup (a day of snapshot growth on a real datastore)."""
    repo_root = tmp_path / "repo"
    port = free_port()
    # RPO 24 h: after its first point the VM gets no backup for a day.
    sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root, port=port, rpo="24h")
    proxy.refuse("RemoveSnapshot_Task", times=3)  # the first try and two retries
    d = Daemon(cfg, port, tmp_path / "daemon.log")
    try:
        await wait_until(lambda: _has_point(repo_root), 60, "the first point")
        assert proxy.refused >= 1, "the snapshot removal was never attempted"
        session = await connect(sim)
        try:
            deadline = time.monotonic() + 30
            while left := await snapshots_left(session, [VM]):
                assert time.monotonic() < deadline, (
                    f"snapshot still on the VM 30 s after vCenter came back: {left}\n{d.tail()}"
                )
                await asyncio.sleep(0.5)
        finally:
            await session.close()
        assert d.terminate() == 0, d.tail()
        verify_ok(cfg)
        repo = Repository.open(repo_root)
        for pid in repo.list_points():
            assert export_bytes(repo, pid, tmp_path / "export.img") == disk.current
    finally:
        d.kill9()
        proxy.down()


async def test_vcenter_gone_at_snapshot_removal_cli(make_vcsim: Any, tmp_path: Path) -> None:
    """A one-off backup whose snapshot removal meets an outage: the point is good (the disks
    were read), the process says what it left behind, and the next run removes it."""
    repo_root = tmp_path / "repo"
    sim, proxy, disk, cfg = await setup(make_vcsim, tmp_path, repo_root, rate=64 * MIB)
    try:
        proxy.refuse("RemoveSnapshot_Task", times=1)
        r = run_vigil(cfg, "backup", VM)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        assert proxy.refused == 1
        assert "snapshot_remove_failed" in r.stderr, r.stderr
        assert "snapshot is still on" in r.stdout and "next backup" in r.stdout, r.stdout
        assert "Task was destroyed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert await snapshots_left(sim, [VM]) == {VM: 1}
        expected = {r.stdout.split(":", 1)[0]: 0}
        disk.mutate(random.Random(4))
        expected[backup_ok(cfg)] = 1
        assert await snapshots_left(sim, [VM]) == {}
        check_points(repo_root, disk, expected, tmp_path)
        verify_ok(cfg)
    finally:
        proxy.down()


@pytest.mark.parametrize("method", ["CreateSnapshot_Task", "RemoveSnapshot_Task"])
async def test_answer_lost_for_a_snapshot_call_daemon(
    make_vcsim: Any, tmp_path: Path, method: str
) -> None:
    """vCenter carries out the snapshot call but its answer is lost (connection reset):
    vigil cannot know whether the snapshot exists. It must end up removed all the same,
    and the VM protected, without waiting a whole RPO."""
    repo_root = tmp_path / "repo"
    port = free_port()
    sim, proxy, disk, cfg = await setup(
        make_vcsim, tmp_path, repo_root, port=port, rpo="24h", rate=64 * MIB
    )
    proxy.lose_answer(method, times=1)
    d = Daemon(cfg, port, tmp_path / "daemon.log")
    try:
        await wait_until(lambda: _has_point(repo_root), 60, "the first point")
        assert proxy.refused == 1, f"{method} was never called"
        session = await connect(sim)
        try:
            deadline = time.monotonic() + 20
            while left := await snapshots_left(session, [VM]):
                assert time.monotonic() < deadline, f"snapshot left: {left}\n{d.tail()}"
                await asyncio.sleep(0.5)
        finally:
            await session.close()
        assert d.terminate() == 0, d.tail()
        verify_ok(cfg)
        repo = Repository.open(repo_root)
        for pid in repo.list_points():
            assert export_bytes(repo, pid, tmp_path / "export.img") == disk.current
    finally:
        d.kill9()
        proxy.down()
