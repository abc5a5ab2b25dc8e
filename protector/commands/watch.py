"""`vigil watch`: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli import _load


def register(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="run the auto-protector daemon (event- and RPO-driven backups)",
        description="Watch vCenter and keep every VM a policy covers protected: back it up as "
        "soon as it comes into scope, and again before its RPO runs out, within the limits. "
        "SIGTERM/SIGINT stop it cleanly (running backups are cancelled and their snapshots "
        "removed); SIGHUP reloads the policies (they are also reloaded when the files change). "
        "Status: http://<daemon.status_listen>/status, /status.json, /metrics, /healthz.",
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from ..daemon import Daemon

    cfg = _load(args)
    return await Daemon(cfg).run()
