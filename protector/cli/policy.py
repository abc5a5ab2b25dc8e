"""`vigil policy check|diff`: what the policies cover, before they protect anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from protector.cli.common import config_of, json_option, print_json, require_policies_path


def register(sub: Any) -> None:
    p = sub.add_parser(
        "policy",
        help="validate policies against the live inventory, or preview an edit",
        description="check: validate the policies in force (policies.path), read the live "
        "inventory and show per policy the VMs it covers, the overlaps and every VM no policy "
        "covers. diff NEW_PATH: what would change if NEW_PATH replaced them (a dry run). "
        "Exit 0 when valid, 2 when not.",
    )
    sp = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    c = sp.add_parser(
        "check",
        help="validate and show coverage",
        description="Validate the policies in policies.path (every error with file, line, "
        "policy and key), read the live inventory and print per policy the VMs it protects, "
        "the overlaps (who wins) and every VM no policy covers. Exit 0 when valid, 2 on "
        "loading errors or equal-priority conflicts.",
        epilog="Examples:\n\n  vigil policy check\n  vigil policy check --json | jq '.unprotected'",
    )
    json_option(c, 'print {"policies": [...], "overlaps": [...], "unprotected": [...]}')
    c.set_defaults(handler=run_check)
    d = sp.add_parser(
        "diff",
        help="preview replacing the policies with NEW_PATH",
        description="A dry run of a policy edit: which VMs would become protected (+), no "
        "longer protected (-) or protected by another policy (~), which policies are added, "
        "removed or changed, and conflicts under the new set. Nothing is changed. Exit 2 when "
        "NEW_PATH is invalid or has conflicts.",
        epilog="Example:\n\n"
        "  cp -r /etc/vigil/policies.d /tmp/new && $EDITOR /tmp/new/10-prod.toml\n"
        "  vigil policy diff /tmp/new && cp /tmp/new/*.toml /etc/vigil/policies.d/",
    )
    d.add_argument(
        "new_path", metavar="NEW_PATH", help="a policy file, or a directory of *.toml files"
    )
    json_option(d, "print the changes as JSON")
    d.set_defaults(handler=run_diff)


async def _facts(cfg: Any) -> list[Any]:
    """Every configured vCenter's VMs, paths carrying the vCenter's name when several."""
    from dataclasses import replace

    from protector.policyaccess import vm_facts
    from protector.vcenters import read_trees, shown_path

    trees = await read_trees(cfg, tags_required=False)
    return [
        replace(f, path=shown_path(cfg, name, f.path))
        for name, tree in trees.items()
        for f in (vm_facts(v, name) for v in tree.vms())
    ]


def _errors(exc: Any) -> int:
    print(str(exc), file=sys.stderr)
    return 2


async def run_check(args: argparse.Namespace) -> int:
    from policies.cli import check_exit_code, check_report, render_check
    from policies.errors import PolicyLoadError
    from protector.policyaccess import load_checked

    cfg = config_of(args)
    require_policies_path(cfg)
    try:
        load_checked(cfg)  # fail before logging in (with the object-lock check)
    except PolicyLoadError as exc:
        return _errors(exc)
    report = check_report(cfg.policies_path, await _facts(cfg), vcenters=cfg.vcenters)
    if args.json:
        print_json(report)
    else:
        sys.stdout.write(render_check(report))
    code = check_exit_code(report)
    if code:
        from policies.cli import report_errors

        for line in report_errors(report):
            print(line, file=sys.stderr)
    return code


async def run_diff(args: argparse.Namespace) -> int:
    from policies.cli import diff_report, render_diff
    from policies.errors import PolicyLoadError

    cfg = config_of(args)
    from policies.loader import load_policies

    require_policies_path(cfg)
    try:
        load_policies(cfg.policies_path, vcenters=cfg.vcenters)
        load_policies(args.new_path, vcenters=cfg.vcenters)
    except PolicyLoadError as exc:
        return _errors(exc)
    facts = await _facts(cfg)
    report = diff_report(cfg.policies_path, args.new_path, facts, vcenters=cfg.vcenters)
    if args.json:
        print_json(report)
    else:
        sys.stdout.write(render_diff(report))
    return 2 if report["conflicts"] else 0
