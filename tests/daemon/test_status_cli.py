"""`vigil status [--json]` against a status server: what it prints, its exit code, its
errors when no daemon answers or the token is refused."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from protector.cli.app import build_parser
from protector.daemon.metrics import Metrics
from protector.daemon.status_server import StatusServer
from protector.errors import UserError

from .helpers import policy, write_config

FAKE_VC = SimpleNamespace(url="https://vc.example.com/sdk", user="u", password="p")


def vm(path: str, state: str, *, breached: bool = False, error: str = "") -> dict[str, Any]:
    return {
        "path": path,
        "name": path.rsplit("/", 1)[1],
        "state": state,
        "policy": None if state == "unprotected" else "gold",
        "age_text": "2h" if state == "ok" else "",
        "rpo_text": "24h",
        "breached": breached,
        "last_error": error,
    }


def status(*vms: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for v in vms:
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    return {
        "vcenter": "https://vc.example.com/sdk",
        "healthy": True,
        "counts": counts,
        "breached": sum(1 for v in vms if v["breached"]),
        "vms": list(vms),
        "jobs": {"running": [{"vm_name": "db-1"}], "queued": [{"vm_name": "db-2"}]},
        "errors": [],
        "policy_errors": ['prod.toml:3: policy "gold": select.nmes: unknown key'],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, Any]]]:
    """A status server with a status the test may change, and a config pointing at it."""
    current: dict[str, Any] = {}
    srv = StatusServer(lambda: current, lambda: True, Metrics(), token="s3cret")
    await srv.start("127.0.0.1:0")  # the port the kernel picks: never one taken meanwhile
    port = srv.port
    cfg = write_config(
        tmp_path,
        FAKE_VC,
        policy("p", 'names = ["x"]'),
        daemon='status_token_env = "VIGIL_TEST_STATUS_TOKEN"',
    )
    cfg.write_text(cfg.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    try:
        yield cfg, current
    finally:
        await srv.stop()


async def vigil_status(cfg: Path, *extra: str) -> int:
    args = build_parser().parse_args(["--config", str(cfg), "status", *extra])
    return await args.handler(args)


async def test_status_prints_every_vm_and_exits_1_on_a_breach_or_failure(
    served, capsys, monkeypatch
):
    cfg, current = served
    monkeypatch.setenv("VIGIL_TEST_STATUS_TOKEN", "s3cret")
    current.update(status(vm("/DC0/vm/web-1", "ok"), vm("/DC0/vm/lab", "unprotected")))
    assert await vigil_status(cfg) == 0
    out = capsys.readouterr().out
    assert "https://vc.example.com/sdk: live" in out
    assert "select.nmes: unknown key" in out, "policy errors are shown"
    web = next(line for line in out.splitlines() if "/DC0/vm/web-1" in line)
    assert "ok" in web and "gold" in web and "2h" in web and "24h" in web
    assert "running: db-1" in out and "queued: db-2" in out

    current.update(
        status(
            vm("/DC0/vm/web-1", "ok"),
            vm("/DC0/vm/app-1", "queued", breached=True),
            vm("/DC0/vm/db-1", "failing", breached=True, error="datastore unreachable"),
        )
    )
    assert await vigil_status(cfg) == 1
    out = capsys.readouterr().out
    assert "queued+breach" in out
    assert "datastore unreachable" in out

    assert await vigil_status(cfg, "--json") == 1
    assert json.loads(capsys.readouterr().out)["breached"] == 2


async def test_status_names_the_url_when_no_daemon_answers_or_the_token_is_refused(
    served, tmp_path, monkeypatch
):
    cfg, current = served
    current.update(status())
    monkeypatch.setenv("VIGIL_TEST_STATUS_TOKEN", "wrong")
    with pytest.raises(UserError) as exc:
        await vigil_status(cfg)
    assert "token refused" in str(exc.value) and "VIGIL_TEST_STATUS_TOKEN" in str(exc.value)

    port = free_port()  # nothing listens here
    cfg.write_text(
        "\n".join(
            f'status_listen = "127.0.0.1:{port}"' if line.startswith("status_listen") else line
            for line in cfg.read_text().splitlines()
        )
    )
    with pytest.raises(UserError) as exc:
        await vigil_status(cfg)
    assert f"127.0.0.1:{port}/status.json" in str(exc.value)
    assert "is `vigil watch` running" in str(exc.value)


async def test_status_exits_1_when_the_daemon_is_not_connected_to_vcenter(
    tmp_path, vcsim_binary, capsys
):
    """Issue 19 item 3: a monitoring script runs `vigil status`; a daemon that lost vCenter
    protects nothing, so that is a failure (exit 1), not "NOT CONNECTED" with exit 0."""
    import asyncio

    from protector.daemon.daemon import Daemon
    from protector.devtools.simulator import Simulator

    from .helpers import load, wait_for
    from .helpers import write_config as daemon_config

    sim = Simulator(binary=vcsim_binary).start()
    try:
        cfg = daemon_config(tmp_path, sim, policy("none", 'names = ["no-such-vm"]'))
        daemon = Daemon(load(cfg))
        # The daemon runs in this process: its log lines (the watcher retrying vCenter, on
        # its own clock) would land on the stdout `vigil status --json` prints to.
        with capture_logs():
            task = asyncio.create_task(daemon.run(install_signals=False))
            try:
                await wait_for(lambda: daemon.ready.is_set() or task.done(), 30, "the daemon")
                assert not task.done(), task.result()
                # The daemon listens where the kernel put it; `vigil status` reads it here.
                assert daemon.status is not None
                port = daemon.status.port
                cfg.write_text(cfg.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
                assert await vigil_status(cfg) == 0, capsys.readouterr().out
                assert ": live" in capsys.readouterr().out
                assert sim.proc is not None
                sim.proc.kill()  # vCenter gone
                sim.stop()
                await wait_for(lambda: not daemon.healthy(), 30, "the daemon to see the outage")
                assert await vigil_status(cfg) == 1
                out = capsys.readouterr().out
                assert "NOT CONNECTED" in out
                assert await vigil_status(cfg, "--json") == 1
                assert json.loads(capsys.readouterr().out)["healthy"] is False
            finally:
                daemon.request_stop()
                await asyncio.wait_for(task, 60)
    finally:
        sim.stop()
