"""`vigil backup` and `vigil prune` run at the same time, round after round, with prune's
grace period already over for everything stored (so its sweep would delete any chunk it
wrongly thinks unreferenced); some of them are killed (SIGKILL) part-way. Prune must never
take a point its retention keeps, nor a chunk a point (committed or being written) needs,
and whatever a killed process left is cleaned up by the next runs."""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from repository import Repository

from .helpers import (
    MIB,
    DataDisk,
    VcenterProxy,
    age_repository,
    connect,
    export_bytes,
    points_by_vm,
    prepare_disk,
    referenced_chunks,
    run_vigil,
    snapshots_left,
    start_vigil,
    stored_chunks,
    temp_files,
    verify_ok,
    write_config,
)

pytestmark = pytest.mark.slow

SEED = 31337
ROUNDS = 8
KEEP = 2
VMS = {"DC0_H0_VM0": 6 * MIB, "DC0_H0_VM1": 4 * MIB + 4096}


async def wait_proc(p: subprocess.Popen[bytes], timeout: float = 120) -> int:
    return await asyncio.to_thread(p.wait, timeout)


async def test_backup_and_prune_at_once_and_killed_lose_nothing_retention_keeps(
    make_vcsim: Any, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=200"])
    proxy = VcenterProxy(sim.url, rate=8 * MIB).up()  # a backup then lasts about a second
    session = await connect(sim)
    try:
        disks: dict[str, DataDisk] = {
            name: await prepare_disk(session, sim, name, size, rng) for name, size in VMS.items()
        }
    finally:
        await session.close()
    cfg = write_config(tmp_path, proxy.url, sim.password, VMS, keep_last=KEEP)
    repo_root = tmp_path / "repo"
    expected: dict[str, int] = {}  # point id -> disk version it must hold
    order: dict[str, list[str]] = {name: [] for name in VMS}  # every point ever, oldest first
    story: list[str] = []
    try:
        for rnd in range(ROUNDS):
            for d in disks.values():
                d.mutate(rng)
            if repo_root.exists():
                age_repository(repo_root, 2 * 3600)
            codes = await _one_round(cfg, tmp_path, rnd, rng, kills=rnd < ROUNDS - 1)
            story.append(f"round {rnd}: {codes}")
            repo = Repository.open(repo_root)
            for name, pids in points_by_vm(repo).items():
                for pid in pids:
                    if pid not in expected:
                        expected[pid] = len(disks[name].versions) - 1
                        order[name].append(pid)
            live = set(repo.list_points())
            for name, pids in order.items():
                if not pids:
                    continue  # every backup of it killed so far
                newest = set(pids[-KEEP:])
                assert newest <= live, (
                    f"round {rnd}: prune deleted {sorted(newest - live)} of {name}, which "
                    f"retention (keep_last {KEEP}) keeps\n" + "\n".join(story)
                )
            for pid in sorted(live):
                name = repo.load_manifest(pid).vm.name
                got = export_bytes(repo, pid, tmp_path / "export.img")
                assert got == disks[name].versions[expected[pid]], f"round {rnd}: point {pid}"

        # The last round ran unharmed: every VM has a point, no snapshot is left over.
        assert all(order.values()), story
        assert await snapshots_left(sim, VMS) == {}, story
        verify_ok(cfg)
        # A last prune on its own: only what the points reference remains.
        age_repository(repo_root, 2 * 3600)
        p = run_vigil(cfg, "prune")
        assert p.returncode == 0, p.stdout + p.stderr[-3000:]
        verify_ok(cfg)
        repo = Repository.open(repo_root)
        assert stored_chunks(repo) == referenced_chunks(repo)
        for name, pids in order.items():
            assert points_by_vm(repo)[name] == pids[-KEEP:], name
        assert not temp_files(repo_root), "temp files of killed writes survived prune"
        print("\n".join(story))
    finally:
        proxy.down()


async def _one_round(
    cfg: Path, tmp_path: Path, rnd: int, rng: random.Random, *, kills: bool
) -> dict[str, int]:
    """Both VMs' backups and a prune, started a random fraction of a second apart; with
    `kills`, each is killed -9 at a random moment with probability 0.4. Returns the exit
    codes (-9: killed)."""
    log = tmp_path / f"round-{rnd}.log"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    killers = []
    starts = [("prune", ("prune",))] + [(name, ("backup", name)) for name in VMS]
    rng.shuffle(starts)
    for what, args in starts:
        procs[what] = start_vigil(cfg, *args, log=log)
        if kills and rng.random() < 0.4:
            killers.append(asyncio.create_task(_kill_later(procs[what], rng.uniform(0.5, 3.0))))
        await asyncio.sleep(rng.uniform(0, 0.8))
    codes = {what: await wait_proc(p) for what, p in procs.items()}
    await asyncio.gather(*killers)
    out = log.read_text(errors="replace")[-5000:]
    assert set(codes.values()) <= {0, -9}, f"round {rnd}: exit codes {codes}\n{out}"
    return codes


async def _kill_later(p: subprocess.Popen[bytes], delay: float) -> None:
    await asyncio.sleep(delay)
    if p.poll() is None:
        p.kill()
