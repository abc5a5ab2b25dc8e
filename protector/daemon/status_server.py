"""The status HTTP server: /healthz, /metrics, /status (HTML) and /status.json.

Bound to loopback by default; with a token configured every request but /healthz must
carry `Authorization: Bearer <token>` (compared in constant time). /healthz answers only
"ok" or "unhealthy", so liveness probes that cannot send a token still work.
"""

from __future__ import annotations

import hmac
import html
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protector.daemon.metrics import Metrics
from protector.logs import redact_value
from watcher.soap import is_loopback

STATE_COLOURS = {
    "ok": "#1a7f37",
    "due": "#9a6700",
    "running": "#0969da",
    "queued": "#0969da",
    "breached": "#cf222e",
    "failing": "#cf222e",
    "conflict": "#cf222e",
    "unprotected": "#6e7781",
}


def age_colour(vm: dict[str, Any]) -> str:
    """The newest point's age against the RPO: green well within, amber in the last tenth,
    red past it (or no point at all); grey when no policy sets an RPO."""
    rpo, age = vm.get("rpo_seconds"), vm.get("age_seconds")
    if not rpo:
        return STATE_COLOURS["unprotected"]
    if age is None or age > rpo:
        return STATE_COLOURS["breached"]
    return STATE_COLOURS["due"] if age > 0.9 * rpo else STATE_COLOURS["ok"]


def render_html(status: dict[str, Any]) -> str:
    esc = html.escape

    def row(vm: dict[str, Any]) -> str:
        colour = STATE_COLOURS.get(vm["state"], "#000")
        # A breach shows whatever the VM is doing (queued, running, failing).
        breach = (
            f" <span style='color:{STATE_COLOURS['breached']}'>· RPO breached</span>"
            if vm.get("breached") and vm["state"] != "breached"
            else ""
        )
        return (
            f"<tr><td>{esc(vm['path'])}</td><td>{esc(vm.get('policy') or '—')}</td>"
            f"<td style='color:{colour};font-weight:bold'>{esc(vm['state'])}{breach}</td>"
            f"<td>{esc(vm.get('newest_point') or '—')}</td>"
            f"<td class='age' style='color:{age_colour(vm)};font-weight:bold'>"
            f"{esc(vm.get('age_text') or ('none' if vm.get('rpo_seconds') else '—'))}</td>"
            f"<td>{esc(vm.get('rpo_text') or '—')}</td>"
            f"<td>{esc(vm.get('last_error') or '')}</td></tr>"
        )

    def job_rows(jobs: list[dict[str, Any]]) -> str:
        return "".join(
            f"<tr><td>{esc(j['vm_name'])}</td><td>{esc(j.get('reason', ''))}</td>"
            f"<td>{esc(j.get('outcome', j.get('state', '')))}</td>"
            f"<td>{esc(str(j.get('error', '')))}</td></tr>"
            for j in jobs
        )

    jobs = status["jobs"]
    active = job_rows(jobs["running"]) + job_rows(jobs["queued"])
    if not active:
        active = "<tr><td colspan='4'>none</td></tr>"

    counts = " · ".join(f"{k}: {v}" for k, v in sorted(status["counts"].items()))
    policy_errors = "".join(f"<li>{esc(e)}</li>" for e in status["policy_errors"])
    errors = "".join(f"<li>{esc(e)}</li>" for e in status["errors"][-20:])
    health = "live" if status["healthy"] else "NOT CONNECTED"
    prune = _prune_line(status.get("prune"), status.get("dispatch_paused"))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>vigil status</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;font-size:90%}}
h2{{margin-top:1.2em}}</style></head><body>
<h1>vigil</h1>
<p>vCenter {esc(status["vcenter"])}: <b>{health}</b> · generated {esc(status["generated_at"])}</p>
<p>{esc(counts)}</p>
{f"<p>{esc(prune)}</p>" if prune else ""}
{
        "<h2>Policy errors (last good policies still in force)</h2><ul>" + policy_errors + "</ul>"
        if policy_errors
        else ""
    }
<h2>Virtual machines</h2>
<table><tr><th>VM</th><th>policy</th><th>state</th><th>newest good point</th><th>age</th>
<th>RPO</th><th>last error</th></tr>{"".join(row(v) for v in status["vms"])}</table>
{"<h2>Recent errors</h2><ul>" + errors + "</ul>" if errors else ""}
<h2>Running and queued jobs ({len(jobs["running"])} running, {len(jobs["queued"])} queued)</h2>
<table><tr><th>VM</th><th>reason</th><th>state</th><th>error</th></tr>{active}</table>
<h2>Recent jobs</h2>
<table><tr><th>VM</th><th>reason</th><th>outcome</th><th>error</th></tr>
{job_rows(list(reversed(jobs["recent"][-20:])))}</table>
{_cluster_html(status.get("cluster"))}
</body></html>"""


def _cluster_html(c: dict[str, Any] | None) -> str:
    """With a [cluster] table: the nodes and their roles, the leader per vCenter, the
    backups running now and on which node."""
    if not c:
        return ""
    esc = html.escape
    me = c.get("this_node", {})
    nodes = "".join(
        f"<tr><td>{esc(n['node'])}</td><td>{esc(n['role'])}</td>"
        f"<td style='color:{STATE_COLOURS['ok'] if n['alive'] else STATE_COLOURS['breached']}'>"
        f"{'alive' if n['alive'] else 'gone'}</td><td>{n['pid']}</td>"
        f"<td>{n['last_seen_seconds']:.0f} s ago</td></tr>"
        for n in c.get("nodes", [])
    )
    leaders = "".join(
        f"<li>vCenter {esc(lead['vcenter'])}: <b>{esc(lead['node'])}</b>, epoch "
        f"{lead['epoch']}{'' if lead['alive'] else ' (not seen)'}</li>"
        for lead in c.get("leaders", [])
    )
    running = (
        "".join(
            f"<tr><td>{j['job']}</td><td>{esc(j.get('vm') or '')}</td>"
            f"<td>{esc(j['node'])}</td></tr>"
            for j in c.get("running_jobs", [])
        )
        or "<tr><td colspan='3'>none</td></tr>"
    )
    error = f"<p><b>cluster database: {esc(c['error'])}</b></p>" if c.get("error") else ""
    return f"""<h2>Cluster (this node: {esc(me.get("node", "?"))}, {esc(me.get("role", "?"))})</h2>
{error}<table><tr><th>node</th><th>role</th><th>state</th><th>pid</th><th>last seen</th></tr>
{nodes}</table>
<ul>{leaders or "<li>no leader elected yet</li>"}</ul>
<h3>Backups running in the cluster ({c.get("queued_jobs", 0)} queued)</h3>
<table><tr><th>job</th><th>VM</th><th>node</th></tr>{running}</table>"""


def _prune_line(prune: dict[str, Any] | None, paused: str | None) -> str:
    parts = []
    if prune:
        line = f"last prune {prune.get('at', '?')}: {prune.get('outcome', '?')}"
        if prune.get("outcome") == "done":
            line += (
                f", {prune.get('points_deleted', 0)} points and "
                f"{prune.get('chunks_deleted', 0)} chunks deleted"
            )
        if prune.get("sweep_deferred"):
            line += f"; chunk sweep deferred: {prune['sweep_deferred']}"
        if prune.get("sweep_limited"):
            line += f"; chunk sweep limited: {prune['sweep_limited']}"
        if prune.get("reason") or prune.get("error"):
            line += f" ({prune.get('reason') or prune.get('error')})"
        parts.append(line)
    if paused:
        parts.append(f"new backups held back: {paused}")
    return " · ".join(parts)


class StatusServer:
    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool],
        metrics: Metrics,
        *,
        token: str = "",
        before_metrics: Callable[[], None] | None = None,
    ) -> None:
        self._status = status
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
            self._before_metrics()
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_json(self, _: web.Request) -> web.Response:
        return web.json_response(self._redacted_status(), dumps=_dumps)

    async def status_html(self, _: web.Request) -> web.Response:
        page = render_html(self._redacted_status())
        return web.Response(text=page, content_type="text/html")

    def _redacted_status(self) -> dict[str, Any]:
        # Error texts come from any library's exceptions: blank secrets quoted in them.
        return redact_value(self._status())  # type: ignore[no-any-return]

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


def _host_of(header: str) -> str:
    """The host part of a Host header, without port or IPv6 brackets, lowercased."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str, indent=1)
