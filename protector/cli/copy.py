"""`vigil copy --to NAME [VM ...]`: the restore points [copies.NAME] lacks, copied into it
(logic: repository/copy.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from protector.cli.common import config_of, copy_config, json_option, open_repository, print_json
from protector.cli.progress import human_bytes
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "copy",
        help="copy restore points to an offsite copy ([copies.NAME])",
        description="Copy every restore point the copy [copies.NAME] does not hold yet (of "
        "the VMs named, else of all), oldest first. Chunks are re-encrypted for the copy's "
        "own passphrase and keys, only those the copy lacks are sent, and what was written is "
        "read back before each point is committed there. The copy is a complete repository: "
        "a configuration whose [repository] points at it lists, verifies and restores. Create "
        "it first with `vigil init --copy NAME`.",
        epilog="Examples:\n\n  vigil copy --to offsite\n  vigil copy --to cloud web-1 --json",
    )
    p.add_argument("--to", required=True, metavar="NAME", help="the [copies.NAME] to copy to")
    p.add_argument(
        "vms",
        nargs="*",
        metavar="VM",
        help="only these VMs' points: name, inventory path, MoRef or instance UUID",
    )
    json_option(p, "print what was copied (points, chunks and bytes sent, problems) as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from protector.repoaccess import all_manifests, matches_vm, open_configured
    from repository.copy import copy_points, failure_reason
    from repository.errors import BackendError

    cfg = config_of(args)
    rc = copy_config(cfg, args.to)
    src = await open_repository(cfg)
    dst = await anyio.to_thread.run_sync(open_configured, rc, cfg)
    vm_keys = None
    if args.vms:
        manifests = await all_manifests(src)
        vm_keys = set()
        for spec in args.vms:
            keys = {m.vm.key for m in manifests if matches_vm(m, spec)}
            if not keys:
                raise UserError(f"no restore points of VM {spec!r} (`vigil list` shows them)")
            vm_keys |= keys

    copied: list[str] = []

    def progress(point: str) -> None:
        copied.append(point)
        if not args.json:
            print(f"copied {point}", file=sys.stderr)

    try:
        result = await anyio.to_thread.run_sync(
            lambda: copy_points(src, dst, vm_keys, threads=cfg.limits.io_threads, progress=progress)
        )
    except BackendError as exc:
        # A point's manifest is written last, after everything it references was read back:
        # a point cut off is simply not in the copy, and the next run copies what is missing.
        raise UserError(
            f"copy to {args.to} ({rc.location}) stopped: {failure_reason(exc)}. "
            f"{len(copied)} point(s) were copied whole before that; the point being copied is "
            f"not in the copy. Run `vigil copy --to {args.to}` again once the storage answers: "
            "it sends only what the copy lacks",
            exit_code=1,
        ) from None
    if args.json:
        print_json(result.as_dict() | {"to": args.to, "location": rc.location})
    else:
        print(
            f"copied {len(result.copied)} point(s) to {args.to} ({rc.location}): "
            f"{result.chunks_sent} chunk(s), {human_bytes(result.bytes_sent)} sent; "
            f"{result.present} point(s) were there already"
            + (f", {result.tombstones} pruned point(s) recorded" if result.tombstones else "")
        )
    for problem in result.problems:
        print(f"vigil: {problem}", file=sys.stderr)
    return 1 if result.problems else 0
