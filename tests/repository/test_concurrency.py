"""Several writers commit at once (threads sharing one repository, different and same
VMs): every point lands, each VM's chain stays intact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from repo_helpers import CHUNK, make_disk, read_back, vm, write_point

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
