"""The daemon end to end with distinctive secrets: after a real backup, its logs (debug
level), its status pages, its metrics and the repr of its configuration and sessions
show neither the vCenter password, nor the repository passphrase, nor the status token,
nor either session cookie."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import pytest

from protector import logs
from protector.config import load_config
from protector.daemon.daemon import Daemon
from repository import Repository

pytestmark = pytest.mark.slow

PASSWORD = "Vc-Pw-d41d8!distinct"
PASSPHRASE = "passphrase-e3b0-distinct"
TOKEN = "status-token-c4ca-distinct"


def write_config(root: Path, sim) -> Path:  # type: ignore[no-untyped-def]
    (root / "policies.d").mkdir()
    (root / "policies.d" / "p.toml").write_text(
        '[[policy]]\nname = "p"\npriority = 10\n[policy.select]\nnames = ["DC0_H0_VM0"]\n'
        '[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 3\n'
    )
    cfg = root / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{sim.url}"\nuser = "{sim.user}"\npassword_env = "VIGIL_SEC_PW"\n'
        '[repository]\npath = "repo"\npassphrase_env = "VIGIL_SEC_PP"\n'
        '[policies]\npath = "policies.d"\n[transport]\nmodes = ["http"]\n'
        '[daemon]\nstatus_listen = "127.0.0.1:0"\nstatus_token_env = "VIGIL_SEC_TOKEN"\n'
        "tag_interval = 1\n"
    )
    Repository.init(root / "repo", passphrase=PASSPHRASE)  # as `vigil init`
    return cfg


async def wait_for(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_daemon_logs_pages_and_reprs_show_no_secret(tmp_path, make_vcsim, monkeypatch):
    sim = make_vcsim(password=PASSWORD)
    monkeypatch.setenv("VIGIL_SEC_PW", PASSWORD)
    monkeypatch.setenv("VIGIL_SEC_PP", PASSPHRASE)
    monkeypatch.setenv("VIGIL_SEC_TOKEN", TOKEN)
    buf = io.StringIO()
    logs.configure("debug", json=True, stream=buf)
    daemon = Daemon(load_config(write_config(tmp_path, sim)))
    task = asyncio.create_task(daemon.run(install_signals=False))
    seen: list[str] = []
    cookies: set[str] = set()
    try:
        await wait_for(lambda: daemon.ready.is_set() or task.done(), 60, "the daemon to sync")
        if task.done():
            task.result()
        await wait_for(
            lambda: any(r.outcome == "success" for r in daemon.runner.history), 90, "a backup"
        )
        for session in (daemon.sessions.current, daemon.vcenters.links[0].watcher._session):
            if session is not None:
                cookies.add(session.session_cookie)
                seen += [repr(session), repr(session.credentials), repr(session.client)]
        seen += [repr(daemon.cfg), repr(daemon.repo), str(vars(daemon.cfg))]
        base = f"http://127.0.0.1:{daemon.status.port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            for path in ("/status", "/status.json", "/metrics", "/healthz"):
                async with http.get(base + path, headers=auth) as r:
                    assert r.status == 200, path
                    seen.append(await r.text())
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
        logs.configure("warning", json=True, stream=io.StringIO())
    cookies.discard("")
    assert cookies, "the test must know the session cookies it looks for"
    text = buf.getvalue() + "\n".join(seen)
    assert "vsphere.login" in text and "DC0_H0_VM0" in text  # the material is real
    for secret in (PASSWORD, PASSPHRASE, TOKEN, *cookies):
        assert secret not in text, f"{secret!r} leaked"
