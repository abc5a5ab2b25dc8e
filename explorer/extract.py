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

import collections
import errno
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from .nodes import DIR, FILE, SYMLINK, Node
from .paths import join, safe_name
from .volumes import Slice

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
    """Copy `size` bytes from src to fd, leaving all-zero blocks as holes. A writer thread
    overlaps the writes with the reads (both release the GIL while they wait)."""
    pending: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=4)
    failed: list[BaseException] = []

    def writer() -> None:
        while (item := pending.get()) is not None:
            if not failed:
                try:
                    os.pwrite(fd, item[0], item[1])
                except BaseException as exc:
                    failed.append(exc)

    thread = threading.Thread(target=writer, name="extract-write", daemon=True)
    thread.start()
    done = 0
    try:
        while done < size and not failed:
            block = src.read(min(BLOCK, size - done))
            if not block:
                raise OSError(errno.EIO, f"data ends at byte {done} of {size}")
            if block != _ZEROS[: len(block)]:
                pending.put((block, done))
            done += len(block)
            on_bytes(len(block))
    finally:
        pending.put(None)
        thread.join()
    if failed:
        raise failed[0]
    os.ftruncate(fd, size)
    return done


def plain_runs(
    stream: BinaryIO, size: int
) -> tuple[Slice, list[tuple[int, int | None, int]]] | None:
    """(volume, [(file offset, volume offset or None for a hole, length)]) when `stream` is
    Dissect's plain RunlistStream over one of our volumes: the file's bytes then sit at
    known places on the disk and can be copied like `vigil export` copies chunks. None for
    anything else (resident, inline, compressed data, LVM): read through the stream."""
    from dissect.util.stream import RunlistStream

    if type(stream) is not RunlistStream:
        return None
    vol = getattr(stream._fh, "raw", stream._fh)  # under the volume's read buffer
    if not isinstance(vol, Slice) or not hasattr(vol.disk, "chunk_bytes"):
        return None
    bs = stream.block_size
    runs: list[tuple[int, int | None, int]] = []
    pos = 0
    for block, count in stream.runlist:
        if pos >= size:
            break
        length = min(count * bs, size - pos)
        runs.append((pos, None if block is None else block * bs, length))
        pos += length
    return (vol, runs) if pos == size else None


def copy_runs(
    vol: Slice,
    runs: list[tuple[int, int | None, int]],
    fd: int,
    size: int,
    on_bytes: Callable[[int], None],
    threads: int = 2,
) -> int:
    """Copy a file's runs from the volume to fd with a small pool, each worker reading
    (through the chunk cache) and writing its own piece, as `vigil export` does."""
    pieces: list[tuple[int, int, int]] = []
    for file_off, vol_off, length in runs:
        if vol_off is None:
            continue  # a hole in the file stays a hole
        done = 0
        while done < length:
            # End pieces on the disk's chunk boundaries, so each reads one chunk.
            absolute = vol.offset + vol_off + done
            take = min(BLOCK - absolute % BLOCK, length - done)
            pieces.append((file_off + done, vol_off + done, take))
            done += take

    def copy(piece: tuple[int, int, int]) -> int:
        file_off, vol_off, length = piece
        data = vol.chunk_bytes(vol_off, length)  # the cached chunk itself: no copy
        if data is not None and data != _ZEROS[:length]:
            os.pwrite(fd, data, file_off)
        return length

    window = threads * 4  # bounded: a few MiB in flight, whatever the file's size
    with ThreadPoolExecutor(threads, thread_name_prefix="extract") as pool:
        inflight: collections.deque[Future[int]] = collections.deque()
        try:
            for piece in pieces:
                inflight.append(pool.submit(copy, piece))
                if len(inflight) >= window:
                    on_bytes(inflight.popleft().result())
            while inflight:
                on_bytes(inflight.popleft().result())
        finally:
            for fut in inflight:
                fut.cancel()
    os.ftruncate(fd, size)
    return size


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
        except Exception as exc:  # a damaged filesystem structure, as the reader found it
            self._error(src, f"cannot be read: {type(exc).__name__}: {exc}")

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
            stream = opener()
            fast = plain_runs(stream, size)
            if fast is not None:
                self.report.bytes += copy_runs(fast[0], fast[1], fd, size, self.on_bytes)
            else:
                self.report.bytes += copy_data(stream, fd, size, self.on_bytes)
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
