"""Shared fixtures: the bundled vCenter simulator, built once and started per need."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from protector.devtools.simulator import Simulator, build


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, `kill`) ends the run as Ctrl-C does: pytest then tears down
    every fixture, so the simulators, SeaweedFS, PostgreSQL clusters and daemons the tests
    started are stopped by PID instead of outliving the run."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """vigil's local state (heads, locks) in a directory of this session, never in
    /var/lib/vigil/state; subprocesses inherit it. A test standing for another host
    passes a state_dir of its own."""
    path = tmp_path_factory.mktemp("vigil-state")
    old = os.environ.get("VIGIL_STATE_DIR")
    os.environ["VIGIL_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VIGIL_STATE_DIR", None)
    else:
        os.environ["VIGIL_STATE_DIR"] = old


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    env = os.environ.get("VIGIL_VCSIM_BINARY")
    return Path(env) if env else build()


@pytest.fixture(scope="session")
def fake_distrib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VDDK-like distribution directory holding our fake lib64/libvixDiskLib.so.8.
    One per test session: VixDiskLib is loaded once per process, from one directory."""
    import shutil

    from vddk_fake import build as build_fake

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fake VixDiskLib")
    distrib = tmp_path_factory.mktemp("vddk-distrib")
    build_fake(distrib)
    return distrib


@pytest.fixture(scope="session")
def vcsim(vcsim_binary: Path) -> Iterator[Simulator]:
    """A session-wide simulator on the default model: for tests that only read."""
    with Simulator(binary=vcsim_binary) as sim:
        yield sim


@pytest.fixture
def vcsim_fresh(vcsim_binary: Path) -> Iterator[Simulator]:
    """A simulator of this test's own: for tests that change the inventory."""
    with Simulator(binary=vcsim_binary) as sim:
        yield sim


@pytest.fixture
def make_vcsim(vcsim_binary: Path) -> Iterator[type[Simulator]]:
    """Start simulators with custom flags: `make_vcsim(args=[...], tls=True)`."""
    started: list[Simulator] = []

    def factory(**kw: object) -> Simulator:
        kw.setdefault("binary", vcsim_binary)
        sim = Simulator(**kw).start()  # type: ignore[arg-type]
        started.append(sim)
        return sim

    yield factory  # type: ignore[misc]
    for sim in started:
        sim.stop()
