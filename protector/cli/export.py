"""`vigil export`: a restore point's disk as a sparse raw image."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import (
    POINT_HELP,
    config_of,
    json_option,
    open_repository,
    print_json,
    require_point,
)
from protector.errors import UserError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a restore point's disk to a sparse raw image file",
        description="Write one disk of a restore point to FILE as a sparse raw image (zero "
        "chunks become holes). Every chunk is verified; on damage the file is removed. Needs "
        "no vCenter.",
        epilog="Examples:\n\n"
        "  vigil export POINT -o web-1.raw\n"
        "  vigil export POINT --disk 2001 -o data.raw && qemu-img convert -O qcow2 data.raw "
        "data.qcow2\n"
        "  vigil export POINT --vss-manifest -o vss-manifest.zip",
    )
    p.add_argument(
        "point",
        metavar="POINT",
        help=POINT_HELP,
    )
    p.add_argument(
        "--disk",
        metavar="KEY",
        help="disk key, as `vigil list --json` shows it (default: the point's only disk)",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.add_argument(
        "--vss-manifest",
        action="store_true",
        help="write the point's vss-manifest.zip (Windows VSS writer metadata) instead of a disk",
    )
    json_option(p, "print what was written (file, bytes) as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from repository.errors import CorruptChunkError, RepositoryError

    cfg = config_of(args)
    repo = await open_repository(cfg)
    args.point = await require_point(repo, args.point)
    from repository.errors import PointNotFoundError

    try:
        m = await anyio.to_thread.run_sync(repo.load_manifest, args.point)
    except PointNotFoundError:
        raise UserError(f"no restore point {args.point!r}; `vigil list` shows them") from None
    if args.vss_manifest:
        return _export_vss(m, args.output, args.force, args.json)
    disk = args.disk
    if disk is None:
        if len(m.disks) != 1:
            keys = ", ".join(d.key for d in m.disks)
            raise UserError(f"restore point {args.point} has disks {keys}: choose one with --disk")
        disk = m.disks[0].key
    try:
        written = await anyio.to_thread.run_sync(
            lambda: repo.export_raw(args.point, disk, args.output, overwrite=args.force)
        )
    except CorruptChunkError as exc:
        raise UserError(f"export failed and {args.output} was removed: {exc}", 1) from None
    except RepositoryError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json({"point": args.point, "disk": disk, "file": args.output, "data_bytes": written})
    else:
        print(f"exported {args.point} disk {disk} to {args.output} ({written} data bytes)")
    return 0


def _export_vss(manifest: Any, output: str, force: bool, as_json: bool = False) -> int:
    import errno
    import os

    data = manifest.vss_manifest
    if not data:
        raise UserError(
            f"restore point {manifest.point_id} has no vss-manifest.zip (only quiesced "
            "snapshots of Windows guests produce one)",
            1,
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(output, flags, 0o600)
    except FileExistsError:
        raise UserError(f"{output} exists; pass --force to overwrite it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{output} is a symbolic link; refused (remove it first)") from None
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if as_json:
        print_json({"point": manifest.point_id, "file": output, "bytes": len(data)})
    else:
        print(f"wrote vss-manifest.zip of {manifest.point_id} to {output} ({len(data)} bytes)")
    return 0
