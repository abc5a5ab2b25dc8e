"""A backup rig (the protector tests' Rig) reading disks with the file transport, so a test
can also change the guest's bytes in the datastore between backups, as the guest would."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protector.config import parse_config
from protector.context import Context
from protector.devtools.simulator import Simulator
from repository import Repository
from tests.protector.conftest import PASSWORD_ENV, Rig, config_toml
from watcher.session import Credentials, Session
from watcher.soap import Endpoint


@pytest.fixture
async def vm_rig(
    vcsim_fresh: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.setenv(PASSWORD_ENV, vcsim_fresh.password)  # for `vigil` subprocesses
    toml = tmp_path / "vigil.toml"
    toml.write_text(config_toml(vcsim_fresh, modes=("file", "http")))
    (tmp_path / "policies").mkdir()
    cfg = parse_config(tomllib.loads(toml.read_text()), str(toml))
    repo = Repository.init(cfg.repository.path)
    session = Session(
        Endpoint(vcsim_fresh.url), Credentials(vcsim_fresh.user, vcsim_fresh.password)
    )
    await session.connect()
    try:
        ctx = Context.create(cfg, session, repo, None)
        yield Rig(vcsim_fresh, cfg, session, repo, ctx, tmp_path)
    finally:
        await session.close()
