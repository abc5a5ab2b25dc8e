"""Fixtures for the security tests: TLS simulators, a CA file, and recording HTTP servers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web


@pytest.fixture
def tls_sim(make_vcsim):  # type: ignore[no-untyped-def]
    """A simulator serving HTTPS with a self-signed certificate (not trusted by default)."""
    return make_vcsim(tls=True)


@pytest.fixture
def sim_ca_file(tls_sim, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """The simulator's certificate as a CA file (it is its own CA, with 127.0.0.1 in its
    SAN): with it, ordinary CA verification of the simulator succeeds."""
    u = urlsplit(tls_sim.url)
    pem = ssl.get_server_certificate((u.hostname, u.port))
    path = tmp_path / "vcsim-ca.pem"
    path.write_text(pem)
    return path


@dataclass
class Recorder:
    """Requests a server saw: (method, path, headers)."""

    url: str = ""
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def headers_text(self) -> str:
        return "\n".join(f"{k}: {v}" for _m, _p, h in self.seen for k, v in h.items())


async def _serve(app: web.Application, host: str) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def redirect_pair() -> AsyncIterator[tuple[str, Recorder]]:
    """A "vCenter" at 127.0.0.1 answering every request with a 307 to the same path on
    another host (127.0.0.2), which records what it is sent. Yields (vcenter url, record)."""
    other = Recorder()

    async def record(request: web.Request) -> web.Response:
        other.seen.append((request.method, request.path_qs, dict(request.headers)))
        return web.Response(status=200, text="{}", content_type="application/json")

    app_other = web.Application()
    app_other.router.add_route("*", "/{tail:.*}", record)
    runner_other, other.url = await _serve(app_other, "127.0.0.2")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(other.url + request.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner, url = await _serve(app, "127.0.0.1")
    try:
        yield url, other
    finally:
        await runner.cleanup()
        await runner_other.cleanup()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield
