"""The status page in a real browser: headless Chromium (Debian's `chromium`) loads /status
from a daemon on the simulator; the test reads the DOM Chromium built (the VM rows, the reason
a VM waits, the conflict, the paging links) and keeps a screenshot as an artifact."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from policies.schedule import local_zone
from protector.daemon.worker import job_phase
from protector.devtools.demo import flat_url, put_disk

from .helpers import find, policy, session_for, wait_for, write_config
from .test_daemon import running

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
SCREENSHOT_COPY = os.environ.get("VIGIL_STATUS_SCREENSHOT")  # e.g. docs/status-page.png


async def chromium(profile: Path, *args: str) -> str:
    """Run Chromium without blocking the loop the daemon under test serves the page on."""
    proc = await asyncio.create_subprocess_exec(
        *[
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Rows(HTMLParser):
    """The cells of the `#vms` table's rows and the pager's links, from the DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: dict[str, str] = {}
        self._table = ""
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
        elif tag == "tr" and self._table == "vms":
            self.rows.append([])
        elif tag == "td" and self._table == "vms":
            self._cell = []
        elif tag == "a" and a.get("class") in ("next", "last", "prev", "first"):
            self.links[a["class"] or ""] = a.get("href") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
async def test_status_page_in_chromium(tmp_path, vcsim_fresh):
    # A window that is closed now (it opens in six hours, daemon's local time): the VM in it
    # must say it waits for the window, not just show a time.
    now = datetime.now(local_zone())
    start, end = now + timedelta(hours=6), now + timedelta(hours=7)
    window = f"{start:%H:%M}-{end:%H:%M}"
    policies = (
        policy(
            "night",
            'names = ["DC0_H0_VM0"]',
            extra="[policy.trigger]\noutside_window = false\n",
        ).replace('rpo = "24h"', f'rpo = "24h"\nwindow = "{window}"')
        + policy("a", 'names = ["DC0_C0_RP0_VM0"]', priority=5)
        + policy("b", 'names = ["DC0_C0_RP0_VM0"]', priority=5)
    )
    cfg = write_config(tmp_path, vcsim_fresh, policies)
    profile = tmp_path / "chromium-profile"
    async with running(cfg) as daemon:
        assert daemon.status is not None
        base = f"http://127.0.0.1:{daemon.status.port}/status"
        dom = await chromium(profile, "--dump-dom", f"{base}?per_page=2")
        page = Rows()
        page.feed(dom)
        rows = {r[0].rsplit("/", 1)[-1]: r for r in page.rows if r}
        assert len(page.rows) == 1 + 2, "a header and two VM rows: one page, not every VM"
        # Problems first: the VM with no point yet (its RPO is breached) and the conflict head
        # the first page, before the unprotected VMs.
        assert set(rows) == {"DC0_H0_VM0", "DC0_C0_RP0_VM0"}, page.rows
        conflict = rows["DC0_C0_RP0_VM0"]
        assert conflict[2] == "conflict", conflict
        assert "policies a and b select it with equal priority" in conflict[7], conflict
        assert page.links.get("next") and "page=2" in page.links["next"], page.links
        # Every VM can be reached: the filter finds the one waiting for its window.
        dom = await chromium(profile, "--dump-dom", f"{base}?q=DC0_H0_VM0")
        page = Rows()
        page.feed(dom)
        rows = {r[0].rsplit("/", 1)[-1]: r for r in page.rows if r}
        assert set(rows) == {"DC0_H0_VM0"}, rows
        why = rows["DC0_H0_VM0"][7]
        assert f"backup window {window} closed" in why, why
        assert f"opens {start:%Y-%m-%d %H:%M}" in why, why
        shot = tmp_path / "status-page.png"
        await chromium(profile, f"--screenshot={shot}", "--window-size=1280,900", base)
        assert shot.stat().st_size > 10_000, "a screenshot with something on it"
        if SCREENSHOT_COPY:
            shutil.copyfile(shot, SCREENSHOT_COPY)


async def test_a_job_record_carries_its_phase_and_bytes(tmp_path, vcsim_fresh):
    """What the page's progress column shows: the worker keeps the job's phase and the bytes
    read of those planned on its record while it runs; the last phase before the point is
    written is the commit, and every planned byte was read."""
    s = await session_for(vcsim_fresh)
    try:
        vm = await find(s, "/DC0/vm/DC0_H0_VM0")
        await put_disk(s, await flat_url(s, vm), b"web data\n" * 100_000)  # ~1 MB to read
    finally:
        await s.close()
    cfg = write_config(tmp_path, vcsim_fresh, policy("one", 'names = ["DC0_H0_VM0"]'))
    async with running(cfg) as daemon:
        assert daemon.runner is not None
        runner = daemon.runner
        rec = await wait_for(
            lambda: next((r for r in runner.history if r.outcome == "success"), None),
            60,
            "the first backup",
        )
        assert rec.phase == "commit", rec
        assert rec.total_bytes > 0 and rec.read_bytes == rec.total_bytes, rec
        assert job_phase("removing the snapshot") == "snapshot removal"
        assert job_phase("creating the snapshot (quiesced)") == "snapshot"
