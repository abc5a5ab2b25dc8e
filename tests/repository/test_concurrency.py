"""Several writers commit at once (threads sharing one repository, and separate
processes; different and same VMs): every point lands, each VM's chain stays intact."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from repo_helpers import (
    CHUNK,
    PASSPHRASE,
    POINT_ID,
    ROOT,
    WRITER,
    make_disk,
    read_back,
    vm,
    write_point,
)

from repository import Repository, verify


def test_concurrent_commits_keep_every_point_and_chain(repo: Repository) -> None:
    jobs = [(n % 2 + 1, n) for n in range(8)]  # two VMs, four points each

    def one(job: tuple[int, int]) -> tuple[str, int]:
        vm_no, seed = job
        return write_point(repo, vm(vm_no), {"d": make_disk(3 * CHUNK, seed)}), seed

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(one, jobs))
    assert sorted(p for p, _ in done) == repo.list_points()
    for vm_no in (1, 2):
        seqs = sorted(m.seq for m in repo.manifests(vm(vm_no).key))
        assert seqs == [1, 2, 3, 4]
    assert verify(repo, read_data=True).ok
    for point, seed in done:
        assert read_back(repo, point, "d") == make_disk(3 * CHUNK, seed)


def test_writer_processes_committing_at_once_keep_every_point_and_chain(
    repo: Repository,
) -> None:
    # Separate processes (separate daemons or a daemon and a one-off `vigil backup`) share
    # only the files: the per-VM lock and write-once objects must serialise their commits.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    children = [
        subprocess.Popen(
            [sys.executable, str(WRITER), str(repo.root), PASSPHRASE, str(seed), "6"],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
        )
        for seed in range(3)
    ]
    committed: list[str] = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        committed += [line for line in out.splitlines() if POINT_ID.fullmatch(line)]
    assert len(committed) == 18
    assert sorted(committed) == repo.list_points()
    for key in {m.vm.key for m in repo.manifests()}:
        seqs = sorted(m.seq for m in repo.manifests(key))
        assert seqs == list(range(1, len(seqs) + 1))  # no seq used twice, none skipped
    report = verify(repo, read_data=True)
    assert report.ok, report.lines()
