"""Walking, searching and comparing the trees of restore points (pure logic over nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .nodes import DIR, Node
from .paths import glob_matches, join
from .point import OpenPoint, entry_record


def walk(node: Node, path: str) -> Iterator[tuple[str, Node]]:
    """(path, node) for everything below `node` (not itself), parents before children,
    names in order. Symlinks are reported, never followed."""
    for child in sorted(node.children(), key=lambda n: n.name):
        child_path = join(path, child.name)
        yield child_path, child
        if child.kind == DIR:
            yield from walk(child, child_path)


def find(point: OpenPoint, pattern: str) -> Iterator[tuple[str, Node]]:
    """Every entry on every readable volume whose name (or, for a pattern with a slash,
    whose whole `/VOLUME/...` path) matches the glob."""
    for vol in point.readable_volumes():
        for path, node in walk(vol.root, f"/{vol.name}"):
            if glob_matches(pattern, path, node.name):
                yield path, node


@dataclass(frozen=True)
class Change:
    change: str  # added, removed, modified
    path: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.change, "path": self.path, "a": self.before, "b": self.after}


# What makes an entry "modified": a guest changing a file changes its size or mtime (or
# its type, permissions, link target); comparing every byte of two points is a restore.
_COMPARED = ("type", "size", "mtime", "mode", "target")


def diff_records(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[Change]:
    """Changes from tree a to tree b, each a {path: entry record} map; sorted by path."""
    out: list[Change] = []
    for path in sorted(a.keys() | b.keys()):
        ra, rb = a.get(path), b.get(path)
        if ra is None:
            out.append(Change("added", path, None, rb))
        elif rb is None:
            out.append(Change("removed", path, ra, None))
        elif any(ra[k] != rb[k] for k in _COMPARED if not (k == "size" and ra["type"] == DIR)):
            out.append(Change("modified", path, ra, rb))
    return out


def tree_records(point: OpenPoint, path: str | None) -> dict[str, dict[str, Any]]:
    """{path: entry record} under `path` (a volume or directory), or of every volume."""
    records: dict[str, dict[str, Any]] = {}
    if path and path.strip("/"):
        _vol, node = point.resolve(path)
        roots = [(join(path), node)]
    else:
        roots = [(f"/{v.name}", v.root) for v in point.readable_volumes()]
    for root_path, root in roots:
        if root.kind != DIR:
            records[root_path] = entry_record(root_path, root)
            continue
        for p, node in walk(root, root_path):
            records[p] = entry_record(p, node)
    return records
