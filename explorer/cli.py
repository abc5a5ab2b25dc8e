"""`vigil files ls|get|find|diff` and `vigil mount`: file-level restore from the command line.

`add_commands(sub, open_repository=...)` registers the commands on vigil's sub-parsers; the
caller passes how to open the configured repository (an async function of the parsed
arguments), so this package does not depend on where the CLI's helpers live. Exit codes as
everywhere in vigil: 0 ok; 1 the command ran and found a problem (damaged data, entries it
had to refuse); 2 it could not run (no such point, volume or path). Errors are one line on
stderr and, with --json, an {"error": {...}} object on stdout.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:  # imported where used: `vigil --help` must not load the repository/dissect
    from repository import Repository

    from .disk import ChunkCache
    from .point import OpenPoint

OpenRepo = Callable[[argparse.Namespace], Awaitable["Repository"]]
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any, *, open_repository: OpenRepo) -> None:
    """Register `files` (ls, get, find, diff) and `mount` on vigil's sub-parsers."""
    files = sub.add_parser(
        "files",
        help="browse, search and extract files inside a restore point",
        description="Read the files inside a restore point straight from the repository: "
        "no vCenter, no VDDK, no root. Volumes (MBR, GPT, LVM) and filesystems (ext2/3/4, "
        "XFS, Btrfs, NTFS, FAT) are read with Dissect; chunks are fetched on demand. Paths "
        "are /VOLUME/dir/file, with VOLUME as `vigil files ls POINT` shows it.",
        epilog="Examples:\n\n"
        "  vigil files ls POINT                       # the volumes\n"
        "  vigil files ls POINT /disk0p1/etc\n"
        "  vigil files find POINT '*.xlsx'\n"
        "  vigil files get POINT /disk0p2/Users/ann/report.xlsx --to ./restored\n"
        "  vigil files get POINT /disk0p1/etc/fstab --stdout | less\n"
        "  vigil files diff OLDER_POINT NEWER_POINT /disk0p1/etc",
    )
    fsub = files.add_subparsers(dest="files_command", metavar="SUBCOMMAND", required=True)
    wrap = functools.partial(_guarded, open_repository=open_repository)

    p = fsub.add_parser(
        "ls",
        help="list the volumes, or a directory's entries",
        description="Without PATH, the volumes found on the point's disks (diskNpM for a "
        "partition, diskN for a filesystem on a whole disk, vg-lv for LVM) with their "
        "filesystem, label and size. With PATH (/VOLUME/dir), that directory's entries: "
        "name, type, size, mtime, mode and symlink target.",
    )
    p.add_argument("point", metavar="POINT", help="restore point id, from `vigil list`")
    p.add_argument("path", nargs="?", metavar="PATH", help="/VOLUME/dir (default: the volumes)")
    p.add_argument("--disk", type=int, metavar="N", help="only the volumes of disk N (0, 1 ...)")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(handler=wrap(cmd_files_ls))

    p = fsub.add_parser(
        "get",
        help="extract files and directories",
        description="Copy files and whole directories (recursively) into DIR, keeping mode, "
        "mtime, symlinks (recreated, never followed), hard links and holes; NTFS alternate "
        "data streams become NAME:STREAM files. Names that would escape DIR are refused; "
        "existing files are never overwritten. A file on damaged data is reported and left "
        "out; the rest is extracted (exit code 1).",
    )
    p.add_argument("point", metavar="POINT", help="restore point id, from `vigil list`")
    p.add_argument("paths", nargs="+", metavar="PATH", help="/VOLUME/path to extract")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--to", metavar="DIR", help="directory to extract into (created)")
    dest.add_argument("--stdout", action="store_true", help="write one file's bytes to stdout")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.set_defaults(handler=wrap(cmd_files_get))

    p = fsub.add_parser(
        "find",
        help="search all volumes by name",
        description="Every entry whose name matches GLOB (case-insensitive; a GLOB with a "
        "slash matches the whole /VOLUME/... path).",
    )
    p.add_argument("point", metavar="POINT", help="restore point id, from `vigil list`")
    p.add_argument("glob", metavar="GLOB", help="e.g. '*.xlsx' or '/disk0p1/etc/*.conf'")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(handler=wrap(cmd_files_find))

    p = fsub.add_parser(
        "diff",
        help="what changed between two points",
        description="Entries added, removed and modified (type, size, mtime, mode or link "
        "target differ) from POINT_A to POINT_B, under PATH or on every volume.",
    )
    p.add_argument("point_a", metavar="POINT_A", help="the older restore point")
    p.add_argument("point_b", metavar="POINT_B", help="the newer restore point")
    p.add_argument("path", nargs="?", metavar="PATH", help="/VOLUME/dir to compare")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.set_defaults(handler=wrap(cmd_files_diff))

    p = sub.add_parser(
        "mount",
        help="mount restore points read-only (FUSE)",
        description="A read-only FUSE view at MOUNTPOINT: <vm>/<point>/<volume>/... and each "
        "disk as <vm>/<point>/disks/diskN.img (loop devices, ntfs-3g, qemu-img can read it). "
        "VM limits it to one VM's points, POINT to one point; without either, every point. "
        "Runs until unmounted (fusermount3 -u MOUNTPOINT), Ctrl-C or SIGTERM.",
        epilog="Examples:\n\n"
        "  vigil mount web-1 /mnt/vigil &\n"
        "  ls /mnt/vigil/web-1/                     # its restore points\n"
        "  cp /mnt/vigil/web-1/POINT/disk0p1/etc/fstab .\n"
        "  qemu-img convert -O qcow2 /mnt/vigil/web-1/POINT/disks/disk0.img web-1.qcow2",
    )
    p.add_argument("target", nargs="?", metavar="VM|POINT", help="a VM or a restore point id")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.set_defaults(handler=wrap(cmd_mount))


def _guarded(
    fn: Callable[[argparse.Namespace, Repository], Awaitable[int]], *, open_repository: OpenRepo
) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def handler(args: argparse.Namespace) -> int:
        from repository import RepositoryError

        from .point import ExplorerError

        repo = await open_repository(args)
        try:
            return await fn(args, repo)
        except ExplorerError as exc:
            return report(str(exc), EXIT_USAGE, "user", args)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return report(exc.strerror or str(exc), EXIT_PROBLEM, "damaged", args)
        except RepositoryError:
            raise  # vigil's own handler phrases these
        except Exception as exc:
            # A filesystem structure the reader could not parse (a damaged or unusual image).
            msg = f"cannot read the filesystem: {type(exc).__name__}: {exc}"
            return report(msg, EXIT_PROBLEM, "filesystem", args)

    return handler


def report(message: str, code: int, kind: str, args: argparse.Namespace) -> int:
    print(f"vigil: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print_json({"error": {"type": kind, "message": message, "exit_code": code}})
    return code


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _require_point(repo: Repository, point_id: str) -> None:
    from .point import ExplorerError

    ids = repo.list_points()
    if point_id not in ids:
        close = [i for i in ids if i.startswith(point_id[:12])][:2] if point_id else []
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ExplorerError(f"no restore point {point_id!r}{hint} (`vigil list` shows them)")


def _open(repo: Repository, point_id: str, cache: ChunkCache | None = None) -> OpenPoint:
    from .point import open_point

    _require_point(repo, point_id)
    return open_point(repo, point_id, cache)


# -- ls ---------------------------------------------------------------------------------------


def files_ls(repo: Repository, point_id: str, path: str | None, disk: int | None) -> list[dict]:
    from .point import ExplorerError, entry_record

    with _open(repo, point_id) as point:
        if not path or not path.strip("/"):
            vols = [v for v in point.volumes if disk is None or v.disk == disk]
            if disk is not None and disk >= len(point.disks):
                raise ExplorerError(
                    f"restore point {point_id} has {len(point.disks)} disk(s): no disk {disk}"
                )
            return [v.as_dict() for v in vols]
        _vol, node = point.resolve(path)
        base = "/" + "/".join(p for p in path.split("/") if p)
        if node.kind != "dir":
            return [entry_record(base, node)]
        kids = sorted(node.children(), key=lambda n: n.name)
        return [entry_record(f"{base}/{c.name}", c) for c in kids]


async def cmd_files_ls(args: argparse.Namespace, repo: Repository) -> int:
    records = await anyio.to_thread.run_sync(
        lambda: files_ls(repo, args.point, args.path, args.disk)
    )
    if args.json:
        print_json(records)
        return EXIT_OK
    for r in records:
        if "volume" in r:
            print(
                f"{r['volume']:<12} disk {r['disk']}  {r['fs'] or '-':<7} "
                f"{_human(r['size']):>10}  {r['label'] or ''}"
            )
        else:
            link = f" -> {r['target']}" if r["target"] is not None else ""
            print(
                f"{_type_char(r['type'])}{r['mode']}  {r['size']:>12}  {r['mtime'][:19]}  "
                f"{r['name']}{link}"
            )
    return EXIT_OK


def _type_char(kind: str) -> str:
    return {"dir": "d", "symlink": "l", "file": "-"}.get(kind, "?")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# -- get --------------------------------------------------------------------------------------


class Progress:
    """Bytes copied so far, redrawn on one stderr line at most 5 times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()
        self._drawn = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.2:
            self._drawn = now
            rate = self.done / max(now - self.start, 1e-6)
            sys.stderr.write(f"\rextracted {_human(self.done)} ({_human(int(rate))}/s)  ")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self._drawn:
            sys.stderr.write("\n")


def files_get(
    repo: Repository, point_id: str, paths: list[str], dest: str, progress: Progress
) -> dict[str, Any]:
    from .extract import Extractor

    with _open(repo, point_id) as point:
        resolved = [(p, *point.resolve(p)) for p in paths]  # every path exists, or nothing
        with Extractor(dest, progress) as ex:
            for path, _vol, node in resolved:
                src = "/" + "/".join(p for p in path.split("/") if p)
                ex.extract(src, node, name=node.name or _vol.name)
        progress.finish()
        return {"point": point_id, "to": dest, **ex.report.as_dict()}


def files_cat(repo: Repository, point_id: str, path: str, out: Any) -> int:
    from .point import ExplorerError

    with _open(repo, point_id) as point:
        _vol, node = point.resolve(path)
        if node.kind != "file":
            raise ExplorerError(f"{path} is a {node.kind}; --stdout takes one file")
        src, left = node.open(), node.size
        try:
            while left > 0:
                block = src.read(min(1 << 20, left))
                if not block:
                    break
                out.write(block)
                left -= len(block)
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise OSError(errno.EIO, f"{path}: cannot be read: {exc.strerror}") from exc
            raise
        out.flush()
        return node.size - left


async def cmd_files_get(args: argparse.Namespace, repo: Repository) -> int:
    from .point import ExplorerError

    if args.stdout:
        if len(args.paths) != 1:
            raise ExplorerError("--stdout takes exactly one file")
        await anyio.to_thread.run_sync(
            lambda: files_cat(repo, args.point, args.paths[0], sys.stdout.buffer)
        )
        return EXIT_OK
    progress = Progress(sys.stderr.isatty() and not args.json)
    result = await anyio.to_thread.run_sync(
        lambda: files_get(repo, args.point, args.paths, args.to, progress)
    )
    for err in result["errors"]:
        print(f"vigil: {err['path']}: {err['error']}", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(
            f"extracted {result['files']} files, {result['dirs']} directories, "
            f"{result['symlinks']} symlinks, {result['hardlinks']} hard links "
            f"({_human(result['bytes'])}) to {args.to}"
            + (f"; {len(result['errors'])} entries failed" if result["errors"] else "")
        )
    return EXIT_PROBLEM if result["errors"] else EXIT_OK


# -- find -------------------------------------------------------------------------------------


def files_find(repo: Repository, point_id: str, pattern: str) -> list[dict[str, Any]]:
    from .point import entry_record
    from .tree import find

    with _open(repo, point_id) as point:
        return [entry_record(p, n) for p, n in find(point, pattern)]


async def cmd_files_find(args: argparse.Namespace, repo: Repository) -> int:
    records = await anyio.to_thread.run_sync(lambda: files_find(repo, args.point, args.glob))
    if args.json:
        print_json(records)
    else:
        for r in records:
            print(r["path"])
    return EXIT_OK


# -- diff -------------------------------------------------------------------------------------


def files_diff(repo: Repository, a: str, b: str, path: str | None) -> list[dict[str, Any]]:
    from .disk import ChunkCache
    from .tree import diff_records, tree_records

    cache = ChunkCache()  # shared: the two points have most chunks in common
    try:
        with _open(repo, a, cache) as pa, _open(repo, b, cache) as pb:
            changes = diff_records(tree_records(pa, path), tree_records(pb, path))
            return [c.as_dict() for c in changes]
    finally:
        cache.close()


async def cmd_files_diff(args: argparse.Namespace, repo: Repository) -> int:
    changes = await anyio.to_thread.run_sync(
        lambda: files_diff(repo, args.point_a, args.point_b, args.path)
    )
    if args.json:
        print_json(changes)
        return EXIT_OK
    mark = {"added": "+", "removed": "-", "modified": "M"}
    for c in changes:
        print(f"{mark[c['change']]} {c['path']}")
    if not changes:
        print("no changes")
    return EXIT_OK


# -- mount ------------------------------------------------------------------------------------


async def cmd_mount(args: argparse.Namespace, repo: Repository) -> int:
    from .fuseview import mount_view

    # In the main thread, blocking: libfuse handles the signals that unmount the view.
    mount_view(repo, args.target, args.mountpoint)
    return EXIT_OK
