"""A restore point opened for browsing: its disks as on-demand `RepoDisk`s, the volumes on
them, and `/VOLUME/dir/...` paths resolved to nodes. Holds the repository's shared read
lock while open, so a prune cannot remove chunks under a running browse or extraction."""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import Any

from repository import Manifest, Repository

from .disk import ChunkCache, RepoDisk
from .nodes import Node
from .paths import split_point_path
from .volumes import Volume, discover


class ExplorerError(Exception):
    """A request that cannot be served (a volume or path that does not exist); names it."""


class OpenPoint:
    def __init__(self, repo: Repository, point_id: str, cache: ChunkCache) -> None:
        self.repo = repo
        self.point_id = point_id
        self.cache = cache
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(repo.reading())
        try:
            self.manifest: Manifest = repo.load_manifest(point_id)
            self.disks: list[RepoDisk] = []
            for rec in self.manifest.disks:
                _m, index = repo.disk_index(point_id, rec.key)
                fetch = repo.slot_fetcher(point_id, rec.key, index)
                self.disks.append(RepoDisk(point_id, rec.key, index, fetch, cache))
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> OpenPoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    @cached_property
    def volumes(self) -> list[Volume]:
        return discover(self.disks)

    def volume(self, name: str) -> Volume:
        for v in self.volumes:
            if v.name == name:
                return v
        names = ", ".join(v.name for v in self.volumes) or "none"
        raise ExplorerError(
            f"restore point {self.point_id} has no volume {name!r} (volumes: {names})"
        )

    def readable_volumes(self) -> list[Volume]:
        return [v for v in self.volumes if v.handle is not None]

    def resolve(self, path: str) -> tuple[Volume, Node]:
        """`/VOLUME/a/b` -> (volume, node of a/b); ExplorerError naming what is missing."""
        try:
            vol_name, parts = split_point_path(path)
        except ValueError as exc:
            raise ExplorerError(str(exc)) from None
        if not vol_name:
            raise ExplorerError(f"{path}: name a volume first, as /VOLUME/... (`vigil files ls`)")
        vol = self.volume(vol_name)
        if vol.handle is None:
            why = vol.error or "no filesystem vigil can read"
            raise ExplorerError(f"volume {vol.name} of {self.point_id}: {why}")
        node = vol.root
        walked = f"/{vol.name}"
        for part in parts:
            try:
                node = node.child(part)
            except FileNotFoundError:
                raise ExplorerError(
                    f"{path}: {walked}/{part} does not exist in restore point {self.point_id}"
                ) from None
            except NotADirectoryError:
                raise ExplorerError(f"{path}: {walked} is not a directory") from None
            walked += f"/{node.name}"
        return vol, node


def open_point(repo: Repository, point_id: str, cache: ChunkCache | None = None) -> OpenPoint:
    """Open a point; without a shared `cache` it gets its own, closed with the point."""
    if cache is not None:
        return OpenPoint(repo, point_id, cache)
    own = ChunkCache()
    try:
        point = OpenPoint(repo, point_id, own)
    except BaseException:
        own.close()
        raise
    point._stack.callback(own.close)
    return point


def entry_record(path: str, node: Node) -> dict[str, Any]:
    """The `files ls --json` record of one entry."""
    from datetime import UTC, datetime

    mtime = datetime.fromtimestamp(node.mtime_ns / 1e9, UTC)
    return {
        "path": path,
        "name": node.name,
        "type": node.kind,
        "size": node.size,
        "mtime": mtime.isoformat().replace("+00:00", "Z"),
        "mode": f"{node.mode:04o}",
        "target": node.target,
    }
