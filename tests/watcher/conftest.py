"""Fixtures for the watcher tests (helpers live in watchkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from protector.devtools.simulator import Simulator
from watcher.session import Credentials, Session
from watcher.soap import Endpoint


@pytest.fixture
async def admin(vcsim_fresh: Simulator) -> AsyncIterator[Session]:
    """A second session to change the simulator's inventory with."""
    async with Session(
        Endpoint(vcsim_fresh.url), Credentials(vcsim_fresh.user, vcsim_fresh.password)
    ) as s:
        yield s
