"""`vigil status`: ask the running daemon how protected everything is."""

from __future__ import annotations

import argparse
import os
from typing import Any

from protector.cli.common import config_of, json_option, print_json
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="protection state of every VM, from the running daemon",
        description="Fetch /status.json from the `vigil watch` daemon (daemon.status_listen) "
        "and print every VM's policy, newest good restore point and its age against the RPO. "
        "Exit 1 when a VM is failing or has breached its RPO (a monitoring check), 2 when no "
        "daemon answers.",
        epilog="Examples:\n\n"
        "  vigil status\n"
        "  vigil status --json | jq '.vms[] | select(.breached)'",
    )
    json_option(p, "print the daemon's /status.json")
    p.set_defaults(handler=run)


def render(status: dict[str, Any]) -> str:
    lines = [
        f"vCenter {status['vcenter']}: {'live' if status['healthy'] else 'NOT CONNECTED'}",
        "  ".join(f"{k}={v}" for k, v in sorted(status["counts"].items())),
    ]
    for err in status["policy_errors"]:
        lines.append(f"policy error: {err}")
    width = max((len(v["path"]) for v in status["vms"]), default=10)
    lines.append(f"{'VM':<{width}}  {'STATE':<11}  {'POLICY':<16}  {'AGE':>8}  {'RPO':>6}")
    for v in status["vms"]:
        lines.append(
            f"{v['path']:<{width}}  {_state(v):<11}  {(v.get('policy') or '-'):<16}  "
            f"{(v.get('age_text') or '-'):>8}  {(v.get('rpo_text') or '-'):>6}"
            + (f"  {v['last_error']}" if v.get("last_error") else "")
        )
    running = status["jobs"]["running"]
    if running:
        lines.append("running: " + ", ".join(j["vm_name"] for j in running))
    queued = status["jobs"]["queued"]
    if queued:
        lines.append("queued: " + ", ".join(j["vm_name"] for j in queued))
    return "\n".join(lines)


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
    url = f"http://{listen}/status.json"
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
    return 1 if bad else 0
