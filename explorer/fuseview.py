"""The read-only FUSE view of `MountTree` (mfusepy, over libfuse 3). Runs in the
foreground and single-threaded (Dissect's readers are not thread-safe); libfuse unmounts
on SIGINT, SIGTERM and SIGHUP."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import signal
from typing import Any

from .mounttree import MountTree

log = logging.getLogger(__name__)


def _oserror(exc: OSError) -> Exception:
    import mfusepy

    if exc.errno is None:  # raised without an errno: take it from the exception's type
        exc_errno = errno.ENOENT if isinstance(exc, FileNotFoundError) else errno.EIO
        return mfusepy.FuseOSError(exc_errno)
    return mfusepy.FuseOSError(exc.errno)


def make_operations(tree: MountTree) -> Any:
    import mfusepy

    uid, gid = os.getuid(), os.getgid()

    class Operations(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self._handles: dict[int, Any] = {}
            self._next = itertools.count(1)
            self.mounted = False

        def init(self, path: str) -> None:
            self.mounted = True

        def _call(self, fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except OSError as exc:
                if exc.errno == errno.EIO:  # damaged data: the log names file and chunk
                    log.error("%s", exc)
                raise _oserror(exc) from None

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            attrs = self._call(tree.getattr, path)
            for k in ("st_mtime", "st_atime", "st_ctime"):
                attrs[k] = int(attrs[k] * 1e9)
            attrs["st_uid"], attrs["st_gid"] = uid, gid
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *self._call(tree.readdir, path)]

        def readlink(self, path: str) -> str:
            return str(self._call(tree.readlink, path))

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
                raise mfusepy.FuseOSError(errno.EROFS)
            fh = next(self._next)
            self._handles[fh] = self._call(tree.open, path)
            return fh

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return bytes(self._call(tree.read, self._handles[fh], size, offset))

        def release(self, path: str, fh: int) -> int:
            self._handles.pop(fh, None)
            return 0

        def listxattr(self, path: str) -> list[str]:
            return list(self._call(tree.listxattr, path))

        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            return bytes(self._call(tree.getxattr, path, name))

        def _read_only(self, *args: Any, **kwargs: Any) -> Any:
            raise mfusepy.FuseOSError(errno.EROFS)

        create = mkdir = mknod = unlink = rmdir = rename = symlink = link = _read_only
        chmod = chown = truncate = write = utimens = setxattr = removexattr = _read_only

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    return Operations()


def run_mount(tree: MountTree, mountpoint: str) -> None:
    """Serve the view at `mountpoint` until unmounted or signalled (blocks)."""
    import mfusepy

    # libfuse installs its unmount-on-signal handlers only where the default handler is in
    # place; asyncio (and `vigil`'s SIGTERM handling) installed others.
    saved = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    ops = make_operations(tree)
    try:
        mfusepy.FUSE(
            ops,
            mountpoint,
            foreground=True,
            nothreads=True,
            ro=True,
            fsname="vigil",
            subtype="vigil",
            default_permissions=True,
        )
    except RuntimeError:
        # libfuse 3 ends its loop with status 8 when a signal unmounted the view, which
        # mfusepy raises: the normal way to stop, once the view was up.
        if not ops.mounted:
            raise
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def mount_view(repo: Any, target: str | None, mountpoint: str) -> None:
    """`vigil mount`: serve the points `target` names at `mountpoint` until unmounted or
    signalled (blocks; call it from the main thread)."""
    from .disk import ChunkCache
    from .mounttree import points_for
    from .point import ExplorerError, open_point

    if not os.path.isdir(mountpoint):
        raise ExplorerError(f"mount point {mountpoint} is not a directory")
    if not os.path.exists("/dev/fuse"):
        raise ExplorerError("/dev/fuse is missing: FUSE is not available on this host")
    refs = points_for(repo.manifests(), target)
    cache = ChunkCache()  # one cache for every point the view opens
    tree = MountTree(refs, lambda pid: open_point(repo, pid, cache))
    try:
        run_mount(tree, mountpoint)
    except RuntimeError as exc:  # mfusepy: "fuse_main failed" and friends
        raise ExplorerError(f"cannot mount at {mountpoint}: {exc}") from None
    finally:
        tree.close()
        cache.close()
