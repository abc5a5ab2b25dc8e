"""`vigil watch`: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import config_of


def register(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="run the auto-protector daemon (event- and RPO-driven backups)",
        description="Watch vCenter and keep every VM a policy covers protected: back it up as "
        "soon as it comes into scope, and again before its RPO runs out, within the limits. "
        "SIGTERM/SIGINT stop it cleanly (running backups are cancelled and their snapshots "
        "removed); SIGHUP reloads the policies (they are also reloaded when the files change). "
        "Status: http://<daemon.status_listen>/status, /status.json, /metrics, /healthz. "
        "Logs are JSON lines on stdout (for the journal); --log-level defaults to info. A wrong "
        "password or an untrusted certificate stops it at start (exit 2); an unreachable "
        "vCenter is waited for.",
        epilog="Examples:\n\n"
        "  vigil --config /etc/vigil/vigil.toml watch\n"
        "  systemctl enable --now vigil      # contrib/vigil.service runs exactly this\n"
        "  vigil watch --role worker         # a backup proxy of a cluster ([cluster] table)",
    )
    p.add_argument(
        "--role",
        choices=("all", "scheduler", "worker"),
        default="all",
        help="with a [cluster] table: scheduler (one leads per vCenter: watcher, policies, "
        "planner, prune; it queues the backups on PostgreSQL), worker (runs queued backups), "
        "or all (both; the default). Without [cluster] only `all`: one machine does "
        "everything, in process",
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from protector.cli.common import check_repository_location, require_policies_path
    from protector.daemon.daemon import Daemon

    cfg = config_of(args)
    role = getattr(args, "role", "all")
    if cfg.cluster is None and role != "all":
        from protector.errors import UserError

        raise UserError(
            f"{cfg.path}: --role {role} needs a [cluster] table (the nodes share a PostgreSQL "
            "database, docs/cluster.md); without one, `vigil watch` runs everything in this "
            "process (--role all)"
        )
    require_policies_path(cfg)
    check_repository_location(cfg, create=True)
    import asyncio

    # Every vCenter's credentials and certificate (an unreachable one may come back).
    await asyncio.gather(*(preflight_login(cfg.for_vcenter(n)) for n in cfg.vcenters))
    if cfg.cluster is not None:
        from protector.daemon.cluster_node import ClusterNode

        return await ClusterNode(cfg, role).run()
    return await Daemon(cfg).run()


async def preflight_login(cfg: Any) -> None:
    """Log in once before starting: a wrong password, an unset password variable or an
    untrusted certificate never heals, so the service fails at once with one clear line
    (systemd shows it) instead of retrying forever. An unreachable vCenter is different:
    it may come back, and the daemon waits for it."""
    from protector.errors import UserError
    from protector.vsphere.connect import connect_session, explain_connect_error, wont_heal
    from watcher.soap import VsphereError

    try:
        session = await connect_session(cfg, keepalive_interval=0)
    except VsphereError as exc:
        if wont_heal(exc):
            raise UserError(await explain_connect_error(cfg, exc)) from None
        return
    await session.close()
