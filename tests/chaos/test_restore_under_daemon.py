"""`vigil restore --new-name` into a folder a running `vigil watch` protects, ten times.

The daemon sees each new VM the moment vCenter creates it (WaitForUpdatesEx) and wants its
first backup at once; the restore is still writing the disks (its uploads are slowed to
make that window seconds long). The promise under test (issue 13 item 1): the daemon never
backs up a VM a restore holds, it backs it up once the restore is done, and so the
restored VM's first point equals the point it was restored from, byte for byte."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from repository import Repository

from .helpers import (
    MIB,
    Daemon,
    VcenterProxy,
    connect,
    export_bytes,
    free_port,
    points_by_vm,
    prepare_disk,
    run_vigil,
    verify_ok,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

SOURCE = "DC0_H0_VM0"
SIZE = 6 * MIB
ROUNDS = 10
FOLDER = "/DC0/vm/restored"


def folder_policy(root: Path) -> None:
    (root / "policies.d" / "chaos.toml").write_text(
        f"""
[[policy]]
name = "restored"
priority = 10
[policy.select]
folders = ["{FOLDER}/**"]
[policy.schedule]
rpo = "1h"
[policy.retention]
keep_last = 10
"""
    )


async def test_restores_as_new_under_a_running_daemon_are_backed_up_whole(
    make_vcsim: Any, tmp_path: Path
) -> None:
    rng = random.Random(1913)
    sim = make_vcsim()
    # The restore's disk uploads at 3 MiB/s: each restore writes for about two seconds.
    proxy = VcenterProxy(sim.url, upload_rate=3 * MIB).up()
    session = await connect(sim)
    try:
        disk = await prepare_disk(session, sim, SOURCE, SIZE, rng)
        idx = session.content.searchIndex
        vm_folder = session.client.bind(
            await session.call(idx, "FindByInventoryPath", inventoryPath="DC0/vm")
        )
        await session.call(vm_folder, "CreateFolder", name=FOLDER.rsplit("/", 1)[1])
    finally:
        await session.close()
    repo_root = tmp_path / "repo"
    port = free_port()
    daemon_root, cli_root = tmp_path / "daemon", tmp_path / "cli"
    # The daemon talks to vCenter directly; the CLI restore through the slow proxy.
    dcfg = write_config(daemon_root, sim.url, sim.password, [], status_port=port, repo=repo_root)
    folder_policy(daemon_root)
    # One machine, one state directory: the per-VM locks both processes take live there.
    state = f'\n[state]\ndir = "{tmp_path / "state"}"\n'
    dcfg.write_text(dcfg.read_text() + state)
    (cli_root / "policies.d").mkdir(parents=True)
    ccfg = cli_root / "vigil.toml"
    ccfg.write_text(dcfg.read_text().replace(sim.url, proxy.url))

    b = run_vigil(ccfg, "backup", SOURCE)
    assert b.returncode == 0, b.stderr[-3000:]
    [source_point] = points_by_vm(Repository.open(repo_root))[SOURCE]
    source_bytes = export_bytes(Repository.open(repo_root), source_point, tmp_path / "src.raw")
    assert source_bytes == disk.current

    d = Daemon(dcfg, port, daemon_root / "daemon.log")
    story: list[str] = []
    try:
        await wait_until(lambda: d.status(), 60, "the daemon's status page")
        for i in range(ROUNDS):
            name = f"copy-{i}"
            r = run_vigil(ccfg, "restore", source_point, "--new-name", name, "--folder", FOLDER)
            assert r.returncode == 0, f"{name}: {r.stdout}\n{r.stderr[-3000:]}"
            first = await wait_until(
                lambda n=name: points_by_vm(Repository.open(repo_root)).get(n),
                90,
                f"the daemon's first point of {name}",
                every=0.2,
            )
            got = export_bytes(Repository.open(repo_root), first[0], tmp_path / "copy.raw")
            assert got == source_bytes, (
                f"{name}'s first point {first[0]} differs from the point it was restored from "
                f"({source_point}): backed up half-written?\n{d.tail()}"
            )
            story.append(f"{name}: first point {first[0]}")
        status = d.status() or {}
        busy = (status.get("jobs") or {}).get("outcomes", {}).get("busy", 0)
        # Not asserted (it depends on timing): how often the daemon met a restore midway.
        print(f"daemon backups refused as busy (restore in progress): {busy}")
        assert d.proc.poll() is None, f"the daemon died:\n{d.tail()}"
    finally:
        code = d.terminate()
        proxy.down()
    assert code == 0, d.tail()
    verify_ok(ccfg)
