"""Start-up checks of `vigil watch` that need no vCenter: refuse unsafe settings loudly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from protector.daemon.daemon import Daemon
from protector.errors import UserError

from .helpers import load, policy, write_config

FAKE_VC = SimpleNamespace(url="https://vc.example.com/sdk", user="u", password="p")


def config(tmp_path: Path, daemon: str = "", vcenter: str = "") -> Path:
    cfg = write_config(tmp_path, FAKE_VC, policy("p", 'names = ["x"]'), daemon=daemon)
    cfg.write_text(cfg.read_text().replace("[repository]", f"{vcenter}\n[repository]"))
    return cfg


@pytest.mark.parametrize("value", [None, ""])
async def test_status_token_env_unset_or_empty_refuses_to_start(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("VIGIL_TEST_STATUS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("VIGIL_TEST_STATUS_TOKEN", value)
    cfg = load(config(tmp_path, daemon='status_token_env = "VIGIL_TEST_STATUS_TOKEN"'))
    before = sorted((tmp_path / "repo").rglob("*"))
    with pytest.raises(UserError) as exc:
        # Bounded: were the check missing, the daemon would retry the unreachable vCenter.
        await asyncio.wait_for(Daemon(cfg).run(install_signals=False), 20)
    msg = str(exc.value)
    assert "daemon.status_token_env" in msg and "VIGIL_TEST_STATUS_TOKEN" in msg
    assert "unset or empty" in msg
    after = sorted((tmp_path / "repo").rglob("*"))
    assert after == before, "refused before anything was started or written"


def test_status_token_is_read_from_the_named_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("VIGIL_TEST_STATUS_TOKEN", "s3cret")
    cfg = load(config(tmp_path, daemon='status_token_env = "VIGIL_TEST_STATUS_TOKEN"'))
    assert Daemon(cfg)._preflight() == "s3cret"


def test_unverified_tls_without_a_pin_is_warned_about(tmp_path):
    cfg = load(config(tmp_path, vcenter="verify_tls = false"))
    with capture_logs() as logs:
        Daemon(cfg)._preflight()
    warn = [e for e in logs if e["event"] == "daemon.tls_unverified"]
    assert warn and warn[0]["log_level"] == "warning"
    assert "vcenter.thumbprint" in warn[0]["next_step"]

    pinned = load(
        config(
            tmp_path / "pinned",
            vcenter='verify_tls = false\nthumbprint = "' + ":".join(["AB"] * 32) + '"',
        )
    )
    with capture_logs() as logs:
        Daemon(pinned)._preflight()
    assert not [e for e in logs if e["event"] == "daemon.tls_unverified"]


async def test_all_jobs_share_one_io_limiter_of_io_threads(tmp_path):
    cfg = write_config(tmp_path, FAKE_VC, policy("p", 'names = ["x"]'), limits="io_threads = 3")
    daemon = Daemon(load(cfg))
    first = daemon.worker.context(None)  # type: ignore[arg-type]
    second = daemon.worker.context(None)  # type: ignore[arg-type]
    assert first is not second
    assert first.io_limiter is second.io_limiter, "total I/O threads = io_threads, not x jobs"
    assert first.io_limiter.total_tokens == 3 and first.io_threads == 3


async def test_a_status_port_in_use_is_a_one_line_error_naming_the_setting(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(tmp_path, daemon="")
        cfg.write_text(cfg.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        with pytest.raises(UserError) as exc:
            await asyncio.wait_for(Daemon(load(cfg)).run(install_signals=False), 20)
    msg = str(exc.value)
    assert f"daemon.status_listen 127.0.0.1:{port}" in msg and "in use" in msg
    assert "another `vigil watch`" in msg
