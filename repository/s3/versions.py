"""Picking what a key held at a past moment from its version history: pure, no I/O.

After an attacker (or a bad script) with vigil's credentials "deletes" objects in a
versioned bucket, S3 only stacks delete markers on top; the locked versions below stay.
Reading the repository "as of TIME" takes, per key, the newest entry made at or before
TIME: a version is the object's content then, a delete marker means it was already gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class VersionEntry:
    key: str
    version_id: str
    modified: datetime
    size: int
    is_marker: bool


def as_of(entries: Iterable[VersionEntry], when: datetime) -> dict[str, VersionEntry]:
    """Key -> the version it held at `when`; keys deleted or not yet written are absent."""
    newest: dict[str, VersionEntry] = {}
    for e in entries:
        if e.modified > when:
            continue
        cur = newest.get(e.key)
        # Equal times: a marker placed in the same second as a write is the later event
        # only if S3 says so; we cannot tell, so prefer the readable version (no data lost).
        if (
            cur is None
            or e.modified > cur.modified
            or (e.modified == cur.modified and cur.is_marker)
        ):
            newest[e.key] = e
    return {k: e for k, e in newest.items() if not e.is_marker}
