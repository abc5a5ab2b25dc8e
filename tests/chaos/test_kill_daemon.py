"""`vigil watch` killed with SIGKILL at random moments, again and again, while it backs up
several VMs whose disks change between runs.

The promise under test: a crash at any moment loses no committed restore point, every
point restores byte for byte to the data the VM had when it was taken, snapshots a crash
left are removed by the next run, and the repository stays consistent (verify, then prune
and verify again)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
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
    datastore_dir,
    export_bytes,
    free_port,
    grow_disk,
    points_by_vm,
    prepare_disk,
    referenced_chunks,
    run_vigil,
    snapshots_left,
    stored_chunks,
    temp_files,
    verify_ok,
    wait_until,
    write_config,
    write_policy,
)

pytestmark = pytest.mark.slow

PASSPHRASE = "chaos passphrase"
TRANSPORTS = [("http",), ("file",), ("file", "http")]
SEED = int(os.environ.get("VIGIL_CHAOS_SEED", "1729"))  # vary it to explore
KILLS = 8
# Sizes: whole MiB, and one that ends in a partial chunk.
VMS = {"DC0_H0_VM0": 6 * MIB, "DC0_H0_VM1": 5 * MIB + 8 * 1024, "DC0_C0_RP0_VM0": 7 * MIB}


async def kill_at_a_random_moment(d: Daemon, rng: random.Random) -> str:
    """Kill -9 the daemon: at a random time after its start, or while a backup job runs."""
    started = time.monotonic()
    if rng.random() < 0.5:
        delay = rng.uniform(0.3, 7.0)
        await asyncio.sleep(delay)
        moment = f"{delay:.2f} s after start"
    else:
        try:
            await wait_until(lambda: d.running_jobs() > 0, 20, "a running backup job")
        except AssertionError:
            pass  # killed wherever it is, then
        extra = rng.uniform(0.0, 1.0)
        await asyncio.sleep(extra)
        moment = f"{time.monotonic() - started:.2f} s after start, in a backup (+{extra:.2f} s)"
    assert d.proc.poll() is None, f"the daemon died on its own:\n{d.tail()}"
    d.kill9()
    return moment


async def test_kill_9_at_random_moments_loses_no_committed_point(
    make_vcsim: Any, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    # Snapshot tasks that take a while and a slow network path widen the windows a crash
    # can land in: snapshot being made, disk half read, snapshot being removed.
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=250,RemoveSnapshot_Task=250"])
    proxy = VcenterProxy(sim.url, rate=8 * MIB).up()
    session = await connect(sim)
    try:
        disks: dict[str, DataDisk] = {
            name: await prepare_disk(session, sim, name, size, rng) for name, size in VMS.items()
        }
    finally:
        await session.close()
    port = free_port()

    def configure(modes: tuple[str, ...]) -> Path:
        # Encrypted; the transport varies per run (each reads the disk its own way).
        return write_config(
            tmp_path,
            proxy.url,
            sim.password,
            VMS,
            status_port=port,
            rpo="4s",
            modes=modes,
            file_datastore=datastore_dir(sim),
            passphrase=PASSPHRASE,
        )

    cfg = configure(TRANSPORTS[0])
    repo_root = tmp_path / "repo"
    grown = False

    # point id -> the disk content version the VM had during the run that made it
    expected: dict[str, int] = {}
    committed_before_kill: set[str] = set()
    history: list[str] = []
    left: dict[str, int] = {}
    try:
        for run in range(KILLS):
            if run:
                for d in disks.values():
                    d.mutate(rng)
            if run >= KILLS // 2 and not grown and "DC0_H0_VM1" not in left:
                # vSphere refuses to grow a disk that has snapshots: only without a leftover.
                session = await connect(sim)
                try:
                    await grow_disk(session, disks["DC0_H0_VM1"], MIB + 4096, rng)
                finally:
                    await session.close()
                grown = True
            modes = rng.choice(TRANSPORTS)
            cfg = configure(modes)
            d = Daemon(cfg, port, tmp_path / f"daemon-{run}.log")
            moment = await kill_at_a_random_moment(d, rng)
            new = _collect(repo_root, disks, expected)
            committed_before_kill |= set(expected)
            left = await snapshots_left(sim, VMS)
            history.append(
                f"run {run} ({'+'.join(modes)}): killed {moment}; {len(new)} new points; "
                f"snapshots left {left}"
            )

        # A last, clean run on changed data: every VM gets a point, then a normal stop.
        for d in disks.values():
            d.mutate(rng)
        assert grown, "the disk was never grown"
        cfg = configure(("http",))
        before = set(expected)
        d = Daemon(cfg, port, tmp_path / "daemon-final.log")
        try:
            await wait_until(
                lambda: _new_point_per_vm(repo_root, disks, before),
                60,
                "a new point of every VM in the clean run",
                every=0.2,
            )
        finally:
            rc = d.terminate()
        assert rc == 0, d.tail()
        _collect(repo_root, disks, expected)
        await _check_repository(
            cfg, sim, repo_root, disks, expected, committed_before_kill, history
        )
    finally:
        proxy.down()


async def _check_repository(
    cfg: Path,
    sim: Any,
    repo_root: Path,
    disks: dict[str, DataDisk],
    expected: dict[str, int],
    committed_before_kill: set[str],
    history: list[str],
) -> None:
    tmp_path = cfg.parent
    story = "\n".join(history)
    assert await snapshots_left(sim, VMS) == {}, f"snapshots left after a clean stop\n{story}"
    verify_ok(cfg)

    repo = Repository.open(repo_root, PASSPHRASE)
    live = set(repo.list_points())
    lost = committed_before_kill - live
    assert not lost, f"committed points lost: {sorted(lost)}\n{story}"
    _assert_byte_for_byte(repo, disks, expected, live, tmp_path)
    listed = run_vigil(cfg, "list", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert {p["id"] for p in json.loads(listed.stdout)} == live, "`vigil list` disagrees"
    assert len(live) >= len(VMS) * 2, f"too few points to mean anything\n{story}"

    # Prune with a real retention and the grace period over, then the repository again.
    write_policy(tmp_path, VMS, rpo="4s", keep_last=2)
    age_repository(repo_root, 2 * 3600)
    p = run_vigil(cfg, "prune")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    verify_ok(cfg)
    kept = points_by_vm(repo)
    for name in VMS:
        everything = [pid for pid in expected if pid.startswith(_vm_key(repo, kept, name))]
        assert len(kept[name]) == 2, (name, kept[name], p.stdout)
        assert kept[name] == sorted(everything, key=_seq)[-2:], (name, p.stdout)
    _assert_byte_for_byte(repo, disks, expected, set(repo.list_points()), tmp_path)
    # The sweep took what killed runs left behind: no chunk that nothing references.
    assert stored_chunks(repo) == referenced_chunks(repo)
    assert not temp_files(repo_root), "temp files of killed writes survived prune"
    print(story)


def _seq(point_id: str) -> int:
    return int(point_id.rsplit("-", 1)[1])


def _vm_key(repo: Repository, kept: dict[str, list[str]], name: str) -> str:
    return repo.load_manifest(kept[name][0]).vm.key


def _collect(repo_root: Path, disks: dict[str, DataDisk], expected: dict[str, int]) -> list[str]:
    """Record the points that appeared since the last look: each holds its VM's current
    content (the disks only change while no daemon runs)."""
    if not (repo_root / "config").exists():
        return []
    repo = Repository.open(repo_root, PASSPHRASE)
    new = []
    for m in repo.manifests():
        if m.point_id not in expected:
            expected[m.point_id] = len(disks[m.vm.name].versions) - 1
            new.append(m.point_id)
    return new


def _new_point_per_vm(repo_root: Path, disks: dict[str, DataDisk], before: set[str]) -> bool:
    if not (repo_root / "config").exists():
        return False
    repo = Repository.open(repo_root, PASSPHRASE)
    fresh = {m.vm.name for m in repo.manifests() if m.point_id not in before}
    return fresh == set(disks)


def _assert_byte_for_byte(
    repo: Repository,
    disks: dict[str, DataDisk],
    expected: dict[str, int],
    points: set[str],
    tmp_path: Path,
) -> None:
    for pid in sorted(points):
        m = repo.load_manifest(pid)
        disk = disks[m.vm.name]
        want = disk.versions[expected[pid]]
        got = export_bytes(repo, pid, tmp_path / "export.img")
        if got != want:
            matches = [i for i, v in enumerate(disk.versions) if v == got]
            raise AssertionError(
                f"point {pid} of {m.vm.name} ({m.config_info and m.config_info['backup']['type']})"
                f" does not hold version {expected[pid]} of the disk; it equals versions "
                f"{matches or 'none'}"
            )
