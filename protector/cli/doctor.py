"""`vigil doctor`: is everything vigil needs in place? One line per check."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import config_of, json_option, print_json

MARK = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check vCenter access, privileges, transports, repository and policies",
        description="Log in to vCenter and check the account's privileges against the role "
        "in docs/vcenter-role.md, the transports ([transport] modes: VDDK found and its "
        "version, datastore HTTP answering, file mounts present), the repository and the "
        "policies. Each line is OK or says what to fix. Exit 1 when something vigil needs "
        "is missing (a transport only when no configured transport works).",
        epilog="Examples:\n\n  vigil doctor\n  vigil doctor --json | jq '.checks[] | "
        'select(.status != "ok")\'',
    )
    json_option(p, 'print {"ok": bool, "checks": [{name, status, detail, fix, needed}]}')
    p.set_defaults(handler=run)


def render(checks: list[Any]) -> str:
    lines = []
    for c in checks:
        line = f"{MARK[c.status]}  {c.name}: {c.detail}"
        if c.fix and c.status != "ok":
            line += f"\n      fix: {c.fix}"
        lines.append(line)
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    from protector.doctor import failed, run_checks
    from protector.vsphere.connect import open_session

    cfg = config_of(args)
    checks = await run_checks(cfg, open_session)
    bad = failed(checks)
    if args.json:
        print_json({"ok": not bad, "checks": [c.as_dict() for c in checks]})
    else:
        print(render(checks))
    return 1 if bad else 0
