"""kill -9 a writer at random moments: committed points survive intact, debris is
collected by the next prune."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta

from repo_helpers import PASSPHRASE, POINT_ID, ROOT, WRITER, chunk_files

from repository import KeepLast, Repository, prune, verify


def _run_and_kill(repo: Repository, seed: int, delay: float, after: int) -> list[str]:
    """Kill the writer `delay` seconds after it reported `after` committed points: the
    kill lands at a random moment of a later point, whatever the machine's load."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(repo.root), PASSPHRASE, str(seed)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    seen: list[str] = []
    while len(seen) < after:
        line = child.stdout.readline()
        assert line, "the writer ended early"
        if POINT_ID.fullmatch(line.strip()):
            seen.append(line.strip())
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # stdout also carries log lines; point ids are the lines of their own shape.
    return seen + [line for line in out.splitlines() if POINT_ID.fullmatch(line)]


def test_kill_9_at_random_points_never_loses_a_committed_point(repo: Repository) -> None:
    rnd = random.Random(6)
    committed: list[str] = []
    for i in range(20):
        committed += _run_and_kill(repo, seed=i, delay=rnd.uniform(0.0, 0.25), after=i % 2)
        # Every point the writer reported is there and restores intact.
        assert set(committed) <= set(repo.list_points())
        report = verify(repo, read_data=True)
        assert report.ok, report.lines()
    assert len(committed) >= 10  # the kills did land between commits, not only before them

    referenced = {
        c.hex()
        for m in repo.manifests()
        for d in m.disks
        for c in repo.load_index(d.index_id).referenced()
    }
    # Some kills landed mid-point: their chunks are stored but no manifest uses them.
    assert chunk_files(repo.root) > referenced
    result = prune(repo, lambda _vm, _p: KeepLast(1000), grace=timedelta(0))
    assert result.deleted_points == []
    assert chunk_files(repo.root) == referenced  # orphans of killed writers are gone
    assert not [p for p in repo.root.rglob(".tmp-*")]
    assert verify(repo, read_data=True).ok
