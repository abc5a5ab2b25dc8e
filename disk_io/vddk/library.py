"""Loading VixDiskLib, InitEx once per process, the log callbacks and the global lock.

VMware's threading rules live here: InitEx happens once, before any worker uses the
library, and never after a fork; Open/Close (and ConnectEx/Disconnect) never overlap
across threads (`open_close_lock`); Exit runs at process end.
"""

from __future__ import annotations

import atexit
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ..errors import DiskIoError, UntrustedLibrary, VddkError, VddkUnavailable
from .abi import CODE_MASK, OPTIONAL, SONAMES, VIX_OK, ffi

log = structlog.get_logger(__name__)
vddk_log = structlog.get_logger("vixDiskLib")

LOG_BUFFER = 4096
CONFIG_KEY = "transport.vddk_libdir"


def untrusted_reason(path: Path) -> str | None:
    """Why loading code from `path` (a library or its directory) would trust another user,
    or None: it must be owned by root or by us and writable by neither group nor others
    (a sticky directory such as /tmp excepted), the rule ssh applies to its files."""
    me = os.geteuid()
    st = path.stat()
    if st.st_uid not in (0, me):
        return (
            f"{path} is owned by uid {st.st_uid}, not by root or the user running vigil (uid "
            f"{me}); if the VDDK there is genuine, run `chown -R root: {path}`, else fix "
            f"{CONFIG_KEY}"
        )
    sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
        return (
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); run "
            f"`chmod -R go-w {path}`"
        )
    return None


def _check_trusted(libdir: Path, lib: Path) -> None:
    """Refuse (before dlopen: loading runs the library's constructors) a library that the
    distribution directory, its lib64/ or the file itself (after symlinks) lets another user
    replace."""
    real = lib.resolve()
    for p in dict.fromkeys((libdir, lib.parent, real.parent, real)):
        if (why := untrusted_reason(p)) is not None:
            raise UntrustedLibrary(f"VixDiskLib not loaded: {why}")


def candidate_paths(libdir: str | os.PathLike[str]) -> list[Path]:
    """Where we look, in order: `<libdir>/lib64/` first, then `<libdir>` itself."""
    root = Path(libdir)
    return [d / name for d in (root / "lib64", root) for name in SONAMES]


class VddkLibrary:
    """One loaded libvixDiskLib; use `get_library()` for the process-wide instance."""

    def __init__(self, libdir: str | os.PathLike[str], config_file: str | None = None) -> None:
        self.libdir = str(libdir)
        self.config_file = config_file
        tried: list[str] = []
        lib = None
        for path in candidate_paths(libdir):
            tried.append(str(path))
            if not path.exists():
                continue
            _check_trusted(Path(libdir), path)
            try:
                lib = ffi.dlopen(str(path))
            except OSError as exc:
                log.warning("vddk.load_failed", path=str(path), error=str(exc))
                continue
            self.path = str(path)
            break
        if lib is None:
            raise VddkUnavailable(tried, CONFIG_KEY)
        self.lib = lib
        self.libc = ffi.dlopen(None)
        self.open_close_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._initialized = False
        self._exited = False
        self._init_pid = 0
        self._callbacks: list[Any] = []
        self._missing = {name for name in OPTIONAL if not self._lookup(name)}
        log.info("vddk.loaded", path=self.path, missing=sorted(self._missing) or None)

    # -- symbols --------------------------------------------------------------------------

    def _lookup(self, name: str) -> bool:
        try:
            getattr(self.lib, name)
        except (AttributeError, NotImplementedError):
            return False
        return True

    def has(self, name: str) -> bool:
        return name not in self._missing

    def fn(self, name: str) -> Callable[..., Any]:
        if name in self._missing:
            raise VddkError(6, f"{name} is not in {self.path} (an older VDDK)", name)
        return getattr(self.lib, name)  # type: ignore[no-any-return]

    # -- init / exit ----------------------------------------------------------------------

    def _make_logger(self, level: str) -> Any:
        buf_size = LOG_BUFFER

        def callback(fmt: Any, va: Any) -> None:
            # Runs on VDDK's threads: format once (a va_list cannot be reused), never raise.
            try:
                buf = ffi.new("char[]", buf_size)
                self.libc.vsnprintf(buf, buf_size, fmt, va)
                text = ffi.string(buf).decode("utf-8", "replace").rstrip("\n")
                getattr(vddk_log, level)("vddk.log", message=text)
            except Exception:  # an exception must not cross into C
                pass

        return ffi.callback("void(const char *, void *)", callback)

    def ensure_initialized(self) -> None:
        """VixDiskLib_InitEx, exactly once for this process (idempotent, thread-safe)."""
        with self._init_lock:
            if self._initialized:
                if self._init_pid != os.getpid():
                    raise DiskIoError(
                        "VixDiskLib was initialised in a parent process; it cannot be used "
                        "after fork"
                    )
                return
            if self._exited:
                raise DiskIoError("VixDiskLib was already shut down (Exit) in this process")
            cbs = [self._make_logger(level) for level in ("info", "warning", "error")]
            self._callbacks = cbs  # alive until Exit: VDDK keeps the pointers
            libdir = ffi.new("char[]", self.libdir.encode())
            config = ffi.new("char[]", self.config_file.encode()) if self.config_file else ffi.NULL
            err = self.lib.VixDiskLib_InitEx(7, 0, cbs[0], cbs[1], cbs[2], libdir, config)
            self.check(err, "VixDiskLib_InitEx")
            self._initialized = True
            self._init_pid = os.getpid()
            atexit.register(self.exit)
            log.info("vddk.initialized", libdir=self.libdir)

    @property
    def initialized(self) -> bool:
        return self._initialized

    def exit(self) -> None:
        with self._init_lock:
            if not self._initialized or self._init_pid != os.getpid():
                return
            self.lib.VixDiskLib_Exit()
            self._initialized = False
            self._exited = True
            self._callbacks = []

    # -- errors ---------------------------------------------------------------------------

    def error_text(self, err: int) -> str:
        ptr = self.lib.VixDiskLib_GetErrorText(err, ffi.NULL)
        if ptr == ffi.NULL:
            return "unknown error"
        try:
            return ffi.string(ptr).decode("utf-8", "replace")
        finally:
            self.lib.VixDiskLib_FreeErrorText(ptr)

    def check(self, err: int, operation: str) -> None:
        if err != VIX_OK:
            raise VddkError(err & CODE_MASK, self.error_text(err), operation, raw=err)

    def list_transport_modes(self) -> str:
        if not self.has("VixDiskLib_ListTransportModes"):
            return ""
        return ffi.string(self.lib.VixDiskLib_ListTransportModes()).decode()


_lock = threading.Lock()
_library: VddkLibrary | None = None


def get_library(libdir: str | os.PathLike[str]) -> VddkLibrary:
    """The process-wide library, loaded and InitEx'd on first use (call it early, from the
    main thread, before worker threads start: VMware's rule)."""
    global _library
    with _lock:
        if _library is None:
            _library = VddkLibrary(libdir)
        elif Path(_library.libdir) != Path(libdir):
            raise DiskIoError(
                f"VixDiskLib already loaded from {_library.libdir}; {CONFIG_KEY}={libdir} "
                "needs a restart"
            )
        lib = _library
    lib.ensure_initialized()
    return lib


def loaded_library() -> VddkLibrary | None:
    return _library
