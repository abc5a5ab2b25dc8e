"""Helpers for the cluster tests: node processes, waiting on database state, reading the
recorded events."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from cluster.queue import BackupJob, defer_backup, make_app, prepare_database

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PROCS = Path(__file__).resolve().parent / "procs.py"


class Node:
    """A node process (procs.py) with its output in a file."""

    def __init__(self, out: Path, *args: str) -> None:
        self.out = out
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(out, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROCS), *args], stdout=f, stderr=subprocess.STDOUT, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return -9
        return self.proc.returncode


@contextmanager
def nodes(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start(*args: str) -> Node:
        node = Node(tmp_path / f"node-{len(started)}.log", *args)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for n in started:
            n.stop(10)


def start_worker(start: Callable[..., Node], url: str, name: str, **opts: Any) -> Node:
    args = ["worker", url, name]
    for key, value in opts.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return start(*args)


async def wait_for(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`
    (a bound on a broken system, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def set_epoch(url: str, vcenter: str, epoch: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO vigil_cluster_epochs (vcenter, epoch, leader_node) VALUES (%s, %s, 't') "
            "ON CONFLICT (vcenter) DO UPDATE SET epoch = EXCLUDED.epoch",
            (vcenter, epoch),
        )


async def defer(url: str, *jobs: BackupJob) -> list[int | None]:
    await prepare_database(url)
    app = make_app(url)
    async with app.open_async():
        return [await defer_backup(app, j) for j in jobs]


def job_status(url: str) -> dict[int, tuple[str, int]]:
    return {
        r[0]: (r[1], r[2])
        for r in rows(
            url,
            "SELECT id, status, attempts FROM procrastinate_jobs WHERE task_name = %s",
            ("vigil.backup_vm",),
        )
    }


def max_overlap(url: str, group: str) -> dict[str, int]:
    """For each value of `group` (vm or host), the most backups running at once, from the
    recorded start and end/fail events (by the database's clock)."""
    events = rows(
        url,
        f"SELECT {group}, job_id, attempt, kind, at FROM test_events ORDER BY at, id",
    )
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    for key, _job, _attempt, kind, _at in events:
        running[key] = running.get(key, 0) + (1 if kind == "start" else -1)
        peak[key] = max(peak.get(key, 0), running[key])
    return peak
