"""The CLI's progress line (bytes/s and ETA, only on a terminal) and how `vigil backup VM`
finds the one VM an admin names (ambiguity is an error listing the candidates)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from protector.cli import progress as progress_mod
from protector.cli.progress import ProgressLine
from protector.errors import UserError
from protector.vsphere.vmlookup import find_vm

MIB = 1024 * 1024


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_tty_shows_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    out = Tty()
    line = ProgressLine("backup web-1", stream=out)
    clock.now += 2.0
    line(40 * MIB, 100 * MIB)  # 20 MiB/s, 60 MiB to go: 3 s
    shown = out.getvalue()
    assert shown.startswith("\rbackup web-1:")
    assert " 40.0%" in shown and "40.0 MiB / 100.0 MiB" in shown
    assert "20.0 MiB/s" in shown and shown.endswith("ETA 0:03")
    clock.now += 0.05
    line(41 * MIB, 100 * MIB)  # too soon after the last redraw: not drawn
    assert out.getvalue() == shown
    clock.now += 3.0
    line(100 * MIB, 100 * MIB)
    line.finish()
    last = out.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("backup web-1: 100.0%  100.0 MiB / 100.0 MiB  19.8 MiB/s  ETA 0:00")
    assert last.endswith("\n")


def test_a_shorter_line_blanks_what_the_longer_one_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    out = Tty()
    line = ProgressLine("restore", stream=out)
    clock.now += 1.0
    line(1, 100 * 1024**3)  # crawling: an ETA of years, a long line
    first = out.getvalue()
    clock.now += 1.0
    line(50 * 1024**3, 100 * 1024**3)
    second = out.getvalue()[len(first) :]
    assert len(second) >= len(first)  # covers every column the first line used
    assert second.rstrip().endswith("ETA 0:02")
    assert progress_mod.clock(3725.2) == "1:02:05" and progress_mod.clock(65) == "1:05"


def test_progress_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()  # a pipe, a log file: scripts read --json from stdout, not bars
    line = ProgressLine("backup", stream=out)
    line(1, 2)
    line.finish()
    assert out.getvalue() == ""


@dataclass
class Vm:
    name: str
    path: str
    moref: str
    instance_uuid: str
    bios_uuid: str = ""


VMS = [
    Vm("web-1", "/DC0/vm/prod/web-1", "vm-10", "50000000-0000-0000-0000-000000000001"),
    Vm("web-1", "/DC0/vm/test/web-1", "vm-11", "50000000-0000-0000-0000-000000000002"),
    Vm("db-1", "/DC0/vm/prod/db-1", "vm-12", "50000000-0000-0000-0000-000000000003", "4200-x"),
]


def test_a_vm_is_found_by_path_uuid_moref_or_unique_name() -> None:
    assert find_vm(VMS, "/DC0/vm/test/web-1/").moref == "vm-11"
    assert find_vm(VMS, "50000000-0000-0000-0000-00000000000A".replace("A", "3")).name == "db-1"
    assert find_vm(VMS, "vm-10").path == "/DC0/vm/prod/web-1"
    assert find_vm(VMS, " db-1 ").moref == "vm-12"


def test_an_ambiguous_name_lists_the_candidates() -> None:
    with pytest.raises(UserError) as err:
        find_vm(VMS, "web-1")
    msg = str(err.value)
    assert "2 VMs have the name 'web-1'" in msg and "inventory path or instance UUID" in msg
    assert "/DC0/vm/prod/web-1  (vm-10, 50000000-0000-0000-0000-000000000001)" in msg
    assert "/DC0/vm/test/web-1  (vm-11, 50000000-0000-0000-0000-000000000002)" in msg


def test_an_unknown_vm_says_where_to_look() -> None:
    with pytest.raises(UserError, match=r"no VM with name 'web-9'; `vigil inventory`"):
        find_vm(VMS, "web-9")
