"""A one-line progress display for long operations (bytes, rate, ETA), only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def clock(seconds: float) -> str:
    """3725.2 → '1:02:05'; 65 → '1:05'."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLine:
    def __init__(self, label: str, stream: TextIO | None = None, min_interval: float = 0.2) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.min_interval = min_interval
        self.width = 0  # of the last line drawn: a shorter one must blank what it leaves

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.min_interval and done < total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 and total > done else 0
        text = (
            f"{self.label}: {pct:5.1f}%  {human_bytes(done)} / {human_bytes(total)}  "
            f"{human_bytes(rate)}/s  ETA {clock(eta)}"
        )
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def phase(self, text: str) -> None:
        """A slow step without a byte count (protector.phases): on a terminal it replaces
        the line until progress resumes. What follows an interruption is said on any
        stream, on a line of its own: the admin waiting for the cleanup must see it."""
        interrupted = text.startswith("interrupted")
        if not self.enabled:
            if interrupted:
                self.stream.write(f"vigil: {self.label}: {text}\n")
                self.stream.flush()
            return
        line = f"{self.label}: {text}"
        self.stream.write("\r" + line.ljust(self.width) + ("\n" if interrupted else ""))
        self.width = 0 if interrupted else len(line)
        self.last = 0.0  # the next byte count redraws at once
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
