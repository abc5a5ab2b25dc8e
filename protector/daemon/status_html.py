"""The status page's HTML: a summary, the problems first, one page of VMs with why each waits,
the running jobs with their progress, the VMs gone from vCenter that still have points.
Pure: a function of the status dictionary (status_server.py pages it first)."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

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


def _vcenters_line(status: dict[str, Any], health: str) -> str:
    """The opening of the first line: the vCenter and whether it is live, or each of
    several (one that is down is named, the others keep working)."""
    esc = html.escape
    several = status.get("vcenters")
    if not several:
        return f"<p>vCenter {esc(status['vcenter'])}: <b>{health}</b>"
    parts = [
        f"{esc(v['name'])} ({esc(v['url'])}): <b>"
        + ("live" if v["connected"] else "NOT CONNECTED")
        + "</b>"
        for v in several
    ]
    return "<p>vCenters " + " · ".join(parts)


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
            f"<td class='next'>{esc(_short_time(vm.get('next_run')))}</td>"
            f"<td class='why'>{esc(vm.get('why') or '')}</td>"
            f"<td>{esc(vm.get('last_error') or '')}</td></tr>"
        )

    def job_rows(jobs: list[dict[str, Any]]) -> str:
        return "".join(
            f"<tr><td>{esc(j['vm_name'])}</td><td>{esc(j.get('reason', ''))}</td>"
            f"<td>{esc(j.get('outcome', j.get('state', '')))}</td>"
            f"<td class='progress'>{esc(progress_text(j))}</td>"
            f"<td>{esc(str(j.get('error', '')))}</td></tr>"
            for j in jobs
        )

    jobs = status["jobs"]
    active = job_rows(jobs["running"]) + job_rows(jobs["queued"])
    if not active:
        active = "<tr><td colspan='5'>none</td></tr>"

    counts = " · ".join(f"{k}: {v}" for k, v in sorted(status["counts"].items()))
    policy_errors = "".join(f"<li>{esc(e)}</li>" for e in status["policy_errors"])
    errors = "".join(f"<li>{esc(e)}</li>" for e in status["errors"][-20:])
    health = "live" if status["healthy"] else "NOT CONNECTED"
    prune = _prune_line(status.get("prune"), status.get("dispatch_paused"))
    info = status.get("vms_page") or {
        "page": 1,
        "pages": 1,
        "matching": len(status["vms"]),
        "total": len(status["vms"]),
        "state": "",
        "q": "",
    }
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>vigil status</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;font-size:90%}}
h2{{margin-top:1.2em}}</style></head><body>
<h1>vigil</h1>
{_vcenters_line(status, health)} · generated {esc(status["generated_at"])}</p>
<p>{esc(counts)}</p>
{_repository_line(status.get("repository"))}
{_repositories_html(status.get("repositories") or [])}
{f"<p>{esc(prune)}</p>" if prune else ""}
{
        "<h2>Policy errors (last good policies still in force)</h2><ul>" + policy_errors + "</ul>"
        if policy_errors
        else ""
    }
<h2>Virtual machines</h2>
{_filter_form(info)}
{_pager(info)}
<table id='vms'><tr><th>VM</th><th>policy</th><th>state</th><th>newest good point</th>
<th>age</th><th>RPO</th><th>next run</th><th>why</th><th>last error</th></tr>
{"".join(row(v) for v in status["vms"])}</table>
{_pager(info)}
{_gone_html(status.get("gone") or [])}
{"<h2>Recent errors</h2><ul>" + errors + "</ul>" if errors else ""}
<h2>Running and queued jobs ({len(jobs["running"])} running, {len(jobs["queued"])} queued)</h2>
<table id='jobs'><tr><th>VM</th><th>reason</th><th>state</th><th>progress</th><th>error</th></tr>
{active}</table>
<h2>Recent jobs</h2>
<table><tr><th>VM</th><th>reason</th><th>outcome</th><th>read</th><th>error</th></tr>
{job_rows(list(reversed(jobs["recent"][-20:])))}</table>
{_cluster_html(status.get("cluster"))}
</body></html>"""


def _short_time(iso: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM' (UTC, as the daemon gives it)."""
    return iso[:16].replace("T", " ") if iso else "—"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def progress_text(job: dict[str, Any]) -> str:
    """A running job's phase and bytes read of those planned; a finished job's bytes read."""
    if job.get("outcome", "running") != "running" or "phase" not in job:
        done = job.get("read_bytes")
        return _bytes(done) if done else ""
    phase = job.get("phase") or "starting"
    done, total = job.get("read_bytes", 0), job.get("total_bytes", 0)
    if total:
        return f"{phase}: {_bytes(done)} of {_bytes(total)} ({100 * done / total:.0f}%)"
    return phase


def _link(info: dict[str, Any], **change: Any) -> str:
    params = {"page": info["page"], "state": info.get("state", ""), "q": info.get("q", "")}
    params.update(change)
    return "?" + html.escape(urlencode({k: v for k, v in params.items() if v not in ("", None)}))


def _pager(info: dict[str, Any]) -> str:
    """Paging links: first, previous, the page around, next, last."""
    page, pages = info["page"], info["pages"]
    parts = [f"page {page} of {pages} ({info['matching']} of {info['total']} VMs)"]
    if page > 1:
        parts += [
            f"<a class='first' href='{_link(info, page=1)}'>first</a>",
            f"<a class='prev' href='{_link(info, page=page - 1)}'>previous</a>",
        ]
    if page < pages:
        parts += [
            f"<a class='next' href='{_link(info, page=page + 1)}'>next</a>",
            f"<a class='last' href='{_link(info, page=pages)}'>last</a>",
        ]
    return f"<p class='pager'>{' · '.join(parts)}</p>"


FILTER_STATES = (
    "problems",
    "failing",
    "breached",
    "conflict",
    "running",
    "queued",
    "due",
    "unprotected",
    "ok",
)


def _filter_form(info: dict[str, Any]) -> str:
    esc = html.escape
    state = info.get("state", "")
    options = "".join(
        f"<option value='{s}'{' selected' if s == state else ''}>{s}</option>"
        for s in ("", *FILTER_STATES)
    )
    return (
        "<form method='get' id='filter'>state <select name='state'>"
        f"{options}</select> name, policy or error contains "
        f"<input name='q' value='{esc(info.get('q', ''))}'> <button>show</button></form>"
    )


def _gone_html(gone: list[dict[str, Any]]) -> str:
    """VMs deleted from vCenter whose points the repository keeps (retention prunes them)."""
    if not gone:
        return ""
    esc = html.escape
    shown = gone[:50]
    rows = "".join(
        f"<tr><td>{esc(g['identity'])}</td><td>{g['points']}</td>"
        f"<td>{esc(g.get('newest_point') or '—')}</td>"
        f"<td>{esc(_short_time(g.get('newest_point_at')))}</td></tr>"
        for g in shown
    )
    more = f"<p>and {len(gone) - len(shown)} more</p>" if len(gone) > len(shown) else ""
    return f"""<h2 id='gone'>Gone from vCenter, points kept ({len(gone)})</h2>
<table><tr><th>VM identity</th><th>points</th><th>newest point</th><th>taken</th></tr>
{rows}</table>{more}"""


def _repository_line(repo: dict[str, Any] | None) -> str:
    if not repo:
        return ""
    parts = []
    if repo.get("points") is not None:
        parts.append(f"{repo['points']} restore points")
    if repo.get("size_bytes") is not None:
        parts.append(f"{_bytes(repo['size_bytes'])} stored (as of {repo.get('size_at', '?')})")
    if repo.get("last_verify"):
        parts.append(f"last verify {repo['last_verify']}")
    return f"<p id='repository'>repository: {html.escape(' · '.join(parts))}</p>" if parts else ""


def _repositories_html(repos: list[dict[str, Any]]) -> str:
    """Per repository (the primary and each copy): size and objects as of the last walk,
    the points waiting to be copied and a copy's failure, the oldest unlocked point."""
    if len(repos) < 2 and not any(r.get("size_bytes") is not None for r in repos):
        return ""  # no copies and nothing measured yet: the summary line says it all
    from protector.daemon.views import unlocked_text

    esc = html.escape
    rows = []
    for r in repos:
        copy = r.get("role") == "copy"
        state = r.get("state", "") if copy else "primary"
        colour = STATE_COLOURS["failing"] if r.get("error") else STATE_COLOURS["ok"]
        size = (
            f"{_bytes(r['size_bytes'])} · {r['objects']} objects"
            if r.get("size_bytes") is not None
            else "not measured yet"
        )
        waiting = str(r.get("points_waiting", 0)) if copy else "—"
        problem = r.get("error") or "; ".join((r.get("problems") or {}).values())
        if problem and r.get("retry_at"):
            problem += f" (next try {_short_time(r['retry_at'])})"
        rows.append(
            f"<tr><td>{esc(r.get('name') or 'primary')}</td><td>{esc(r['location'])}</td>"
            f"<td style='color:{colour};font-weight:bold'>{esc(state)}</td>"
            f"<td>{esc(size)}</td><td class='waiting'>{esc(waiting)}</td>"
            f"<td>{esc(unlocked_text(r))}</td><td>{esc(problem)}</td></tr>"
        )
    return f"""<h2 id='repositories'>Repositories</h2>
<table><tr><th>repository</th><th>location</th><th>state</th><th>size</th>
<th>points waiting to be copied</th><th>oldest unlocked point</th><th>problem</th></tr>
{"".join(rows)}</table>"""


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
