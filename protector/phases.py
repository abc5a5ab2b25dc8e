"""Which slow step an operation is in, for whoever shows it: the CLI's progress line says
"creating the snapshot" or "removing the snapshot" while vCenter works, where a byte count
has nothing to show, and says so after Ctrl-C, when the cleanup can take minutes and a
silent terminal invites a second Ctrl-C that would leave the snapshot behind.

A context variable, not a parameter threaded through every workflow: the listener set by
the CLI around one command reaches the snapshot code of that command's task (and the tasks
it starts) and no other — the daemon sets none."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Listener = Callable[[str], None]

_listener: ContextVar[Listener | None] = ContextVar("vigil_phase_listener", default=None)

# What the admin is told after Ctrl-C (or SIGTERM) while the snapshot is removed.
REMOVING_AFTER_INTERRUPT = (
    "interrupted: removing the snapshot, this can take minutes on a busy vCenter "
    "(wait for it; a second Ctrl-C leaves it for the next backup to remove)"
)


def announce(text: str) -> None:
    """Tell the listener, if any, that a slow step starts; a display must never break the
    operation it displays, so its errors are dropped."""
    fn = _listener.get()
    if fn is not None:
        with contextlib.suppress(Exception):
            fn(text)


@contextlib.contextmanager
def listening(fn: Listener) -> Iterator[None]:
    token = _listener.set(fn)
    try:
        yield
    finally:
        _listener.reset(token)
