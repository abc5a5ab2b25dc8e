"""Copy files and whole directories out of a restore point into a local directory.

Safety: every name comes from an untrusted filesystem image. Each is checked to be one
plain path component (`paths.safe_name`) and created relative to an open descriptor of its
parent with O_EXCL | O_NOFOLLOW, so neither a crafted name nor a symlink restored earlier
can make a write land outside DIR. Symlinks are recreated as symlinks, never followed.
Existing files are never overwritten. Mode and mtime are set after the data (directories
after their contents, so a read-only directory can still be filled). Runs of zeros become
holes, so sparse files stay sparse. NTFS alternate data streams are written beside their
file as `NAME:STREAM`. A file whose data sits on a damaged chunk is removed again and
reported with its path; the rest of the extraction goes on.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from .nodes import DIR, FILE, SYMLINK, Node
from .paths import join, safe_name

BLOCK = 1024 * 1024
_ZEROS = bytes(BLOCK)


@dataclass
class ExtractReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    streams: int = 0
    bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlinks": self.hardlinks,
            "streams": self.streams,
            "bytes": self.bytes,
            "errors": self.errors,
        }


def copy_data(src: BinaryIO, fd: int, size: int, on_bytes: Callable[[int], None]) -> int:
    """Copy `size` bytes from src to fd, leaving all-zero blocks as holes."""
    done = 0
    while done < size:
        block = src.read(min(BLOCK, size - done))
        if not block:
            raise OSError(errno.EIO, f"data ends at byte {done} of {size}")
        if block != _ZEROS[: len(block)]:
            os.pwrite(fd, block, done)
        done += len(block)
        on_bytes(len(block))
    os.ftruncate(fd, size)
    return done


class Extractor:
    def __init__(self, dest: str, on_bytes: Callable[[int], None] | None = None) -> None:
        os.makedirs(dest, mode=0o700, exist_ok=True)
        self.dest = dest
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        self.report = ExtractReport()
        self.on_bytes = on_bytes or (lambda n: None)
        self._linked: dict[tuple[str, int], str] = {}  # identity -> path relative to DIR

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, path: str, message: str) -> None:
        self.report.errors.append({"path": path, "error": message})

    def extract(self, src_path: str, node: Node, name: str | None = None) -> None:
        """Extract `node` (from point path `src_path`) as DIR/<name or its own name>."""
        self._entry(self.root_fd, "", name or node.name, src_path, node)

    def _entry(self, dir_fd: int, rel_dir: str, name: str, src: str, node: Node) -> None:
        if not safe_name(name):
            self._error(src, f"name {name!r} would escape the target directory: refused")
            return
        rel = f"{rel_dir}/{name}" if rel_dir else name
        try:
            kind = node.kind
            if kind == DIR:
                self._dir(dir_fd, rel, name, src, node)
            elif kind == SYMLINK:
                os.symlink(node.target or "", name, dir_fd=dir_fd)
                self._times(dir_fd, name, node)
                self.report.symlinks += 1
            elif kind == FILE:
                self._file(dir_fd, rel, name, src, node)
            else:
                self._error(src, "not a file, directory or symlink (device, FIFO, socket): skipped")
        except OSError as exc:
            what = exc.strerror or str(exc)
            if exc.errno != errno.EIO:  # a local problem: name the local file
                what = f"{os.path.join(self.dest, rel)}: {what}"
            self._error(src, what)

    def _dir(self, dir_fd: int, rel: str, name: str, src: str, node: Node) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass  # merging into an existing directory is fine; its files are not replaced
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            self.report.dirs += 1
            for child in sorted(node.children(), key=lambda n: n.name):
                self._entry(fd, rel, child.name, join(src, child.name), child)
            os.fchmod(fd, node.mode)
            os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
        finally:
            os.close(fd)

    def _file(self, dir_fd: int, rel: str, name: str, src: str, node: Node) -> None:
        ident = node.identity
        first = self._linked.get(ident) if ident else None
        if first is not None:
            os.link(first, rel, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd,
                    follow_symlinks=False)  # fmt: skip
            self.report.hardlinks += 1
            return
        self._write(dir_fd, name, src, node, node.open, node.size)
        self.report.files += 1
        if ident:
            self._linked[ident] = rel
        for stream in node.streams():
            sname = f"{name}:{stream}"
            if not safe_name(sname):
                self._error(f"{src}:{stream}", "stream name would escape the target directory")
                continue
            self._write(
                dir_fd, sname, f"{src}:{stream}", node,
                lambda s=stream: node.open_stream(s), node.stream_size(stream),
            )  # fmt: skip
            self.report.streams += 1

    def _write(
        self,
        dir_fd: int,
        name: str,
        src: str,
        node: Node,
        opener: Callable[[], BinaryIO],
        size: int,
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            self.report.bytes += copy_data(opener(), fd, size, self.on_bytes)
            os.fchmod(fd, node.mode)
            os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
        except BaseException as exc:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)  # never leave a file that looks restored
            if isinstance(exc, OSError) and exc.errno == errno.EIO:
                raise OSError(errno.EIO, f"{src}: cannot be read: {exc.strerror or exc}") from exc
            raise
        os.close(fd)

    def _times(self, dir_fd: int, name: str, node: Node) -> None:
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
