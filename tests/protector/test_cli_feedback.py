"""Issue 19 item 5: what `vigil backup` tells the admin at a terminal while vCenter works
on the snapshot (no byte count moves then), and after Ctrl-C, while the snapshot is
removed — which can take minutes on a busy vCenter and must not look like a hang."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from protector.cli.progress import ProgressLine
from protector.phases import REMOVING_AFTER_INTERRUPT

ROOT = Path(__file__).resolve().parents[2]
Rig = Any  # the `slow_snapshot_rig` fixture of conftest.py


class Terminal:
    """`vigil` with its stderr on a pseudo-terminal (where progress is drawn), read on a
    thread of its own."""

    def __init__(self, rig: Rig, *args: str) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "protector.cli", "--config", str(rig.tmp / "vigil.toml"),
             *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=ROOT,
            env=dict(os.environ),
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.buf = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            self.buf += data

    @property
    def text(self) -> str:
        return self.buf.decode(errors="replace")

    async def wait_for(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert self.proc.poll() is None or needle in self.text, self.text
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text}"
            await asyncio.sleep(0.05)

    async def finish(self, timeout: float = 120) -> int:
        code = await asyncio.to_thread(self.proc.wait, timeout)
        self.reader.join(5)
        os.close(self.master)
        return code


async def our_snapshots(rig: Rig) -> list[str]:
    return [n for n in await rig.snapshots(await rig.vm()) if n == "vigil-backup"]


async def test_backup_at_a_terminal_says_when_it_creates_and_removes_the_snapshot(
    slow_snapshot_rig: Rig,
) -> None:
    rig = slow_snapshot_rig
    t = Terminal(rig, "backup", "DC0_H0_VM0")
    code = await t.finish()
    assert code == 0, t.text
    assert "backup DC0_H0_VM0: creating the snapshot (quiesced)" in t.text
    assert "backup DC0_H0_VM0: removing the snapshot" in t.text
    # In that order, then the byte count; nothing said of an interruption.
    assert t.text.index("creating the snapshot") < t.text.index("removing the snapshot")
    assert "interrupted" not in t.text


async def test_ctrl_c_says_the_snapshot_is_being_removed_and_removes_it(
    slow_snapshot_rig: Rig,
) -> None:
    rig = slow_snapshot_rig
    t = Terminal(rig, "backup", "DC0_H0_VM0")
    await t.wait_for("creating the snapshot")
    # The snapshot exists as soon as vCenter took the call; its task then runs for 3 s:
    # Ctrl-C lands in it (polled for: the words come a moment before the call).
    deadline = time.monotonic() + 30
    while not await our_snapshots(rig):
        assert time.monotonic() < deadline and t.proc.poll() is None, t.text
        await asyncio.sleep(0.05)
    t.proc.send_signal(signal.SIGINT)
    code = await t.finish()
    assert code == 130, t.text
    assert REMOVING_AFTER_INTERRUPT in t.text, t.text
    assert "interrupted: the snapshot was removed" in t.text
    assert t.text.index(REMOVING_AFTER_INTERRUPT) < t.text.index("the snapshot was removed")
    assert await our_snapshots(rig) == []


def test_off_a_terminal_only_the_interruption_is_said() -> None:
    """Scripts and cron get no progress chatter on stderr, but the cleanup after Ctrl-C or
    SIGTERM is said on any stream (the wait can be minutes)."""
    out = io.StringIO()
    line = ProgressLine("backup web-1", stream=out)
    assert not line.enabled
    line.phase("creating the snapshot (quiesced)")
    line.phase("removing the snapshot")
    assert out.getvalue() == ""
    line.phase(REMOVING_AFTER_INTERRUPT)
    assert out.getvalue() == f"vigil: backup web-1: {REMOVING_AFTER_INTERRUPT}\n"
