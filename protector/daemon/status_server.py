"""The status HTTP server: /healthz, /metrics, /status (HTML) and /status.json.

Bound to loopback by default; with a token configured every request but /healthz must
carry `Authorization: Bearer <token>` (compared in constant time). /healthz answers only
"ok" or "unhealthy", so liveness probes that cannot send a token still work.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from protector.daemon import views
from protector.daemon.metrics import Metrics
from protector.daemon.status_html import STATE_COLOURS, age_colour, render_html
from protector.logs import redact_value
from watcher.soap import is_loopback

__all__ = ["STATE_COLOURS", "StatusServer", "age_colour", "render_html"]


class StatusServer:
    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool],
        metrics: Metrics,
        *,
        complete: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = lambda rows: rows,
        token: str = "",
        before_metrics: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self._status = status  # VM rows light (views.vm_rows) or full
        self._complete = complete  # full rows of the light rows shown (views.complete)
        self._healthy = healthy
        self._metrics = metrics
        self._token = token
        self._before_metrics = before_metrics
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._bind_host = ""

    def host_allowed(self, header: str | None) -> bool:
        """DNS rebinding defence: a web page from evil.example whose name the attacker
        re-points at 127.0.0.1 reaches this loopback server from the admin's browser, but its
        requests carry `Host: evil.example`. Only loopback names and addresses and the
        address we are bound to are accepted. With a bearer token (required for any
        non-loopback bind) every name is accepted: a rebinding page cannot know the token,
        and Prometheus scrapes by the host's DNS name."""
        if self._token:
            return True
        if not header:
            return False  # HTTP/1.1 requires Host; only hand-made requests omit it
        host = _host_of(header)
        bind = self._bind_host
        return is_loopback(host) or host == "localhost." or host == bind.lower()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/status", self.status_html)
        app.router.add_get("/status.json", self.status_json)
        app.router.add_get("/", self.status_html)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.host_allowed(request.headers.get("Host")):
            # 421 Misdirected Request: this server is not the one the name belongs to.
            return web.Response(status=421, text="unexpected Host header\n")
        if self._token and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                return web.Response(status=401, text="bearer token required\n")
        return await handler(request)

    async def healthz(self, _: web.Request) -> web.Response:
        ok = self._healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "unhealthy\n")

    async def metrics(self, _: web.Request) -> web.Response:
        if self._before_metrics:
            # A cluster node reads the cluster's state here (cached: cluster_metrics.py).
            done = self._before_metrics()
            if inspect.isawaitable(done):
                await done
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_json(self, request: web.Request) -> web.Response:
        # Every VM (?per_page=all) is megabytes at 10,000 VMs: no indentation then.
        dumps = _compact if request.query.get("per_page") == "all" else _dumps
        return web.json_response(self._paged_status(request, json=True), dumps=dumps)

    async def status_html(self, request: web.Request) -> web.Response:
        page = render_html(self._paged_status(request, json=False))
        return web.Response(text=page, content_type="text/html")

    def _paged_status(self, request: web.Request, *, json: bool) -> dict[str, Any]:
        """The status with one page of VMs (?page=N&per_page=M&state=S&q=TEXT), problems
        first; the counts stay those of every VM. /status.json?per_page=all gives every VM
        (`vigil status`, scripts); the page never does."""
        status = dict(self._status())
        q = request.query
        vms = status.get("vms", [])
        per = q.get("per_page", "")
        if json and per == "all":
            page, info = views.select_vms(
                vms, per_page=max(1, len(vms)), state=q.get("state", ""), q=q.get("q", "")
            )
            info["per_page"] = "all"
        else:
            page, info = views.select_vms(
                vms,
                page=_int(q.get("page"), 1),
                per_page=min(_int(per, views.PER_PAGE), views.MAX_PER_PAGE),
                state=q.get("state", ""),
                q=q.get("q", ""),
            )
        status["vms"], status["vms_page"] = self._complete(page), info
        # Error texts come from any library's exceptions: blank secrets quoted in them.
        return redact_value(status)  # type: ignore[no-any-return]

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        if not self._token and not is_loopback(host.strip("[]")):
            # The page names every VM, its policy and errors: not for anyone on the network.
            # (An empty host means every interface.)
            raise ValueError(
                f"status server: refusing to listen on {listen} without a bearer token, it "
                "would be reachable from the network; set daemon.status_token_env or listen "
                "on 127.0.0.1"
            )
        self._bind_host = host.strip("[]").lower()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else int(port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _host_of(header: str) -> str:
    """The host part of a Host header, without port or IPv6 brackets, lowercased."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _compact(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str, separators=(",", ":"))


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str, indent=1)
