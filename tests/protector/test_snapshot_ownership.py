"""Which `vigil-backup` snapshots are leftovers: never one a live backup still reads."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from protector.vsphere.snapshots import is_leftover, snapshot_description

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOST = socket.gethostname()


def node(description: str, age: timedelta = timedelta(minutes=5)) -> SimpleNamespace:
    return SimpleNamespace(description=description, createTime=NOW - age)


def test_description_names_the_owner_and_says_it_is_temporary():
    d = snapshot_description("job-7")
    assert "job-7" in d and f"owner={HOST}:{os.getpid()}" in d and "removed automatically" in d


def test_a_live_backup_of_another_process_here_is_left_alone():
    live_pid = os.getppid()  # a process that certainly exists
    assert not is_leftover(node(f"vigil backup; owner={HOST}:{live_pid}"), NOW)


def test_crashed_process_and_own_process_snapshots_are_leftovers():
    dead_pid = 2**22 + 12345  # above pid_max defaults
    assert is_leftover(node(f"vigil backup; owner={HOST}:{dead_pid}"), NOW)
    # One job per VM at a time: our own old snapshot on the VM is a failed removal.
    assert is_leftover(node(snapshot_description("old")), NOW)


def test_another_hosts_snapshot_only_when_stale_and_unowned_ones_always():
    other = "owner=backup-proxy-2.example.com:4242"
    assert not is_leftover(node(other, timedelta(hours=2)), NOW)
    assert is_leftover(node(other, timedelta(hours=25)), NOW)
    assert is_leftover(node(""), NOW)  # made by hand or by a version without owners
