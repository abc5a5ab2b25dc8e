"""`make demo` (`vigil demo`): the whole tour on the bundled simulator, quickly."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from protector.devtools.demo import tour

pytestmark = pytest.mark.slow


async def test_the_demo_tour_does_every_step_in_under_two_minutes(vcsim_binary, capsys):
    start = time.monotonic()
    rc = await tour(keep=False)
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert rc == 0, out
    assert elapsed < 120, f"the tour took {elapsed:.0f} s"
    workdir = Path(re.search(r"demo files in (\S+)", out).group(1))
    for n, what in enumerate(
        [
            "Starting the bundled vCenter simulator",
            "Writing vigil.toml and one policy",
            "Starting the daemon (vigil watch)",
            "Creating VM app-1",
            "Moving app-1 into /DC0/vm/protected",
            "Changing 1 % of the disk and taking an incremental",
            "Restoring the incremental as a new VM",
            "Status",
        ],
        start=1,
    ):
        assert f"== {n}. {what}" in out, out
    protected = re.search(r"protected ([\d.]+) s after the move", out)
    # Protected with no manual step. How soon after the move is a timing goal, measured by
    # bench/bench_daemon.py (event to job start); the bound here only catches a VM left for
    # a later pass (the demo's RPO is 1 h), with room for a loaded machine.
    assert protected and float(protected.group(1)) < 45, "protected without waiting for the RPO"
    # A CBT incremental reads a fraction of the 64 MiB disk, not all of it.
    read = re.search(r"incremental \S+: read ([\d.]+) MiB of 64 MiB", out)
    assert read and float(read.group(1)) < 32, out
    assert "disk identical to the source: YES" in out
    assert re.search(r"/DC0/vm/protected/app-1\s+ok\s+demo-gold", out)
    assert re.search(r"status page: http://127\.0\.0\.1:\d+/status", out)
    assert not exists(workdir), "the demo cleans up its temporary files"


def exists(path: Path) -> bool:
    return path.exists()
