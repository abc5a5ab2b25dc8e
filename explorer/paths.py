"""Pure path logic: splitting `/VOLUME/dir/file`, joining, globbing, and the check that a
name taken from a (possibly hostile) filesystem is one plain path component."""

from __future__ import annotations

import fnmatch


def split_point_path(path: str) -> tuple[str, list[str]]:
    """`/disk0p1/etc/fstab` -> ("disk0p1", ["etc", "fstab"]); `/` -> ("", [])."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"{path}: '..' is not allowed in a path inside a restore point")
    if not parts:
        return "", []
    return parts[0], parts[1:]


def join(*parts: str) -> str:
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


def safe_name(name: str) -> bool:
    """Whether a directory entry's name can be created as one path component in DIR: no
    separators, no `.`/`..`, no NUL, not empty. A filesystem image is untrusted input."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def glob_matches(pattern: str, path: str, name: str) -> bool:
    """A pattern with a slash matches the whole path (`/disk0p1/etc/*.conf`); one without
    matches the name alone (`*.xlsx`), case-insensitively as admins expect."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(path.casefold(), pattern.casefold())
    return fnmatch.fnmatchcase(name.casefold(), pattern.casefold())
