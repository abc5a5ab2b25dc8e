"""`vigil status`: ask the running daemon how protected everything is."""

from __future__ import annotations

import argparse
import os
from typing import Any

from protector.cli.common import clean, config_of, json_option, print_json
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="protection state of every VM, from the running daemon",
        description="Fetch /status.json from the `vigil watch` daemon (daemon.status_listen) "
        "and print every VM's policy, newest good restore point and its age against the RPO; "
        "with a [cluster] table also the nodes and their roles, the leader per vCenter and "
        "the backups running now and where (the VMs are shown by the leading scheduler). "
        "Per repository (the primary and each [copies.NAME]) it shows the size and objects, "
        "the points waiting to be copied and the oldest point no longer under object lock. "
        "Exit 1 when the daemon is not connected to vCenter, a VM is failing or has breached "
        "its RPO, or copying to a copy fails (a monitoring check), 2 when no daemon answers.",
        epilog="Examples:\n\n"
        "  vigil status\n"
        "  vigil status --json | jq '.vms[] | select(.breached)'",
    )
    json_option(p, "print the daemon's /status.json")
    p.set_defaults(handler=run)


def vcenter_lines(status: dict[str, Any]) -> list[str]:
    """One line per vCenter when several are configured (each syncs and fails on its own),
    else the one vCenter's."""
    several = status.get("vcenters")
    if not several:
        return [f"vCenter {status['vcenter']}: {'live' if status['healthy'] else 'NOT CONNECTED'}"]
    return [
        f"vCenter {clean(v['name'])} ({v['url']}): "
        + ("live" if v["connected"] else "NOT CONNECTED")
        + ("" if v["synced"] else ", inventory not read yet")
        + f", {v['vms']} VMs"
        for v in several
    ]


def render(status: dict[str, Any]) -> str:
    lines = [
        *vcenter_lines(status),
        "  ".join(f"{k}={v}" for k, v in sorted(status["counts"].items())),
    ]
    for err in status["policy_errors"]:
        lines.append(f"policy error: {err}")
    width = max((len(v["path"]) for v in status["vms"]), default=10)
    lines.append(f"{'VM':<{width}}  {'STATE':<11}  {'POLICY':<16}  {'AGE':>8}  {'RPO':>6}")
    for v in status["vms"]:
        lines.append(
            f"{clean(v['path']):<{width}}  {_state(v):<11}  {clean(v.get('policy') or '-'):<16}  "
            f"{(v.get('age_text') or '-'):>8}  {(v.get('rpo_text') or '-'):>6}"
            + (f"  {clean(v['last_error'])}" if v.get("last_error") else "")
        )
        if v.get("why") and v["state"] != "ok":
            lines.append(f"    why: {clean(v['why'])}")
    running = status["jobs"]["running"]
    if running:
        lines.append("running: " + ", ".join(_job(j) for j in running))
    queued = status["jobs"]["queued"]
    if queued:
        lines.append("queued: " + ", ".join(clean(j["vm_name"]) for j in queued))
    gone = status.get("gone") or []
    if gone:
        lines.append(f"gone from vCenter, points kept: {len(gone)} VMs")
        for g in gone[:20]:
            lines.append(
                f"  {clean(g['identity'])}: {g['points']} points, newest {g['newest_point']}"
            )
    lines += render_repositories(status.get("repositories") or [])
    if status.get("cluster"):
        lines += render_cluster(status["cluster"])
    return "\n".join(lines)


def render_repositories(repos: list[dict[str, Any]]) -> list[str]:
    """Per repository: size and objects (as of the daemon's last walk), the points waiting
    to be copied and a copy's failure, the oldest point no longer under object lock."""
    from protector.daemon.views import unlocked_text

    lines = []
    for r in repos:
        copy = r.get("role") == "copy"
        head = f"copy {r['name']}" if copy else "repository"
        size = (
            f"{r['size_bytes'] / 2**30:.2f} GiB in {r['objects']} objects (as of {r['size_at']})"
            if r.get("size_bytes") is not None
            else "size not measured yet"
        )
        lines.append(f"{head} {clean(r['location'])}: {size}")
        if copy:
            state = "FAILING" if r.get("error") else r.get("state", "ok")
            lines.append(
                f"  {state}: {r.get('points_waiting', 0)} point(s) waiting to be copied, "
                f"{r.get('copied', 0)} copied since the daemon started"
            )
            if r.get("error"):
                lines.append(f"  error: {clean(r['error'])} (next try {r.get('retry_at')})")
            for vm, why in (r.get("problems") or {}).items():
                lines.append(f"  VM {vm}: {clean(why)}")
        lines.append(f"  oldest unlocked point: {unlocked_text(r)}")
    return lines


def render_cluster(c: dict[str, Any]) -> list[str]:
    """The cluster's part (a `[cluster]` table): nodes and roles, the leader per vCenter,
    the backups running now and where."""
    me = c.get("this_node", {})
    lines = [f"cluster (this node: {me.get('node', '?')}, role {me.get('role', '?')})"]
    if c.get("error"):
        lines.append(f"  cluster database: {c['error']}")
    nodes = c.get("nodes", [])
    width = max((len(n["node"]) for n in nodes), default=4)
    lines.append(f"  {'NODE':<{width}}  {'ROLE':<9}  {'STATE':<5}  {'PID':>7}  LAST SEEN")
    for n in nodes:
        state = "alive" if n["alive"] else "GONE"
        lines.append(
            f"  {n['node']:<{width}}  {n['role']:<9}  {state:<5}  {n['pid']:>7}  "
            f"{n['last_seen_seconds']:.0f}s ago"
        )
    for lead in c.get("leaders", []):
        gone = "" if lead["alive"] else " (not seen: a standby takes over)"
        lines.append(
            f"  leader of vCenter {lead['vcenter']}: {lead['node']}, epoch {lead['epoch']}{gone}"
        )
    running = c.get("running_jobs", [])
    if running:
        lines.append(
            "  running: " + ", ".join(f"{j['vm'] or j['job']} on {j['node']}" for j in running)
        )
    lines.append(f"  queued in the cluster: {c.get('queued_jobs', 0)}")
    return lines


def _job(j: dict[str, Any]) -> str:
    """A running job: the VM, its phase and the bytes read of those planned."""
    name = clean(j["vm_name"])
    phase, done, total = j.get("phase"), j.get("read_bytes", 0), j.get("total_bytes", 0)
    if total:
        return f"{name} ({phase}, {done * 100 // total}% of {total / 2**30:.1f} GiB)"
    return f"{name} ({phase})" if phase else name


def _reason(exc: BaseException) -> str:
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return os.strerror(exc.os_error.errno) if exc.os_error.errno > 0 else str(exc.os_error)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "no answer in 10 s"
    return str(exc) or type(exc).__name__


def _state(vm: dict[str, Any]) -> str:
    """The state word, with the RPO breach flag when the state itself does not say it."""
    if vm.get("breached") and vm["state"] != "breached":
        return f"{vm['state']}+breach"
    return str(vm["state"])


async def run(args: argparse.Namespace) -> int:
    import aiohttp

    cfg = config_of(args)
    listen = cfg.daemon.status_listen
    headers = {}
    if cfg.daemon.status_token_env:
        headers["Authorization"] = f"Bearer {os.environ.get(cfg.daemon.status_token_env, '')}"
    url = f"http://{listen}/status.json?per_page=all"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url, headers=headers) as resp,
        ):
            if resp.status == 401:
                raise UserError(f"{url}: token refused; set {cfg.daemon.status_token_env}")
            resp.raise_for_status()
            status = await resp.json()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UserError(
            f"no vigil daemon answers at {url} ({_reason(exc)}); is `vigil watch` running "
            f"with this configuration ({cfg.path}, daemon.status_listen)?"
        ) from None
    if args.json:
        print_json(status)
    else:
        print(render(status))
    breached = status.get("breached", status["counts"].get("breached", 0))
    bad = breached + status["counts"].get("failing", 0)
    bad += sum(1 for r in status.get("repositories") or [] if r.get("error"))  # a copy failing
    # A daemon cut off from vCenter backs nothing up: a failure for a monitoring check too.
    return 1 if bad or not status.get("healthy", False) else 0
