"""Loading VixDiskLib, its version, InitEx once per process, the log callbacks, and the
one designated thread.

VMware's threading rules live here (VDDK programming guide, "Multiple Threads and
VixDiskLib"): InitEx once per process, before any worker uses the library, never after a
fork; Open and Close "initialize and uninitialize a number of libraries, some of which do
not work if called from multiple threads", so VMware's workaround is "one designated
thread to do all opens and closes" while worker threads read and write. That thread is
`ControlThread`: InitEx, ConnectEx, Open, QueryAllocatedBlocks (VDDK 7.0.2 release notes:
"should be called in the same thread as open and close disk"), Close, Disconnect, Cleanup,
PrepareForAccess, EndAccess and Exit all run on it; `VddkLibrary.run` hands it the call.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog

from ..errors import DiskIoError, VddkError, VddkUnavailable
from .abi import CODE_MASK, OPTIONAL, SONAMES, VIX_OK, ffi

log = structlog.get_logger(__name__)
vddk_log = structlog.get_logger("vixDiskLib")

LOG_BUFFER = 4096
CONFIG_KEY = "transport.vddk_libdir"


def candidate_paths(libdir: str | os.PathLike[str]) -> list[Path]:
    """Where we look, in order: `<libdir>/lib64/` first, then `<libdir>` itself."""
    root = Path(libdir)
    return [d / name for d in (root / "lib64", root) for name in SONAMES]


def library_version(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(major, full version) of a libvixDiskLib: the major from the soname we loaded, the
    full version from the file it resolves to ("libvixDiskLib.so.8.0.2"). VDDK has no call
    that returns its version; nbdkit's vddk plugin reads it the same two ways (the soname,
    and realpath of the loaded library)."""
    name = Path(path).name
    m = re.search(r"\.so\.(\d+)", name)
    major = int(m.group(1)) if m else 0
    real = Path(os.path.realpath(path)).name
    full = re.search(r"\.so\.(\d+(?:\.\d+)*)$", real)
    return major, full.group(1) if full else str(major)


class ControlThread:
    """The one thread VMware wants opens and closes on (module docstring). A daemon, so a
    process can always exit; `run` from the thread itself runs inline."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="vddk-control", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller's thread
                fut.set_exception(exc)

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def run(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[Any] = Future()
        self._queue.put((fn, fut))
        return fut.result()


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
        self.major, self.version = library_version(self.path)
        self.control = ControlThread()
        # Kept for callers that still serialise by hand; every control call also runs on
        # `control`, which serialises them anyway.
        self.open_close_lock = threading.RLock()
        self._init_lock = threading.Lock()
        self._initialized = False
        self._exited = False
        self._init_pid = 0
        self._callbacks: list[Any] = []
        self._missing = {name for name in OPTIONAL if not self._lookup(name)}
        log.info(
            "vddk.loaded",
            path=self.path,
            version=self.version,
            missing=sorted(self._missing) or None,
        )

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
            err = self.run(
                lambda: self.lib.VixDiskLib_InitEx(7, 0, cbs[0], cbs[1], cbs[2], libdir, config)
            )
            self.check(err, "VixDiskLib_InitEx")
            self._initialized = True
            self._init_pid = os.getpid()
            atexit.register(self.exit)
            log.info("vddk.initialized", libdir=self.libdir)

    @property
    def initialized(self) -> bool:
        return self._initialized

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (a control call: open, close, connect...) on the designated thread."""
        return self.control.run(fn)

    def exit(self) -> None:
        with self._init_lock:
            if not self._initialized or self._init_pid != os.getpid():
                return
            self.run(self.lib.VixDiskLib_Exit)
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
_failed: dict[str, VddkUnavailable] = {}


def get_library(libdir: str | os.PathLike[str]) -> VddkLibrary:
    """The process-wide library, loaded and InitEx'd on first use (call it early, from the
    main thread, before worker threads start: VMware's rule)."""
    global _library
    with _lock:
        # A libdir without a loadable library stays so for the process (loading happens
        # once, as InitEx does): not probed, nor its dlopen failures logged, once per disk.
        failed = _failed.get(str(libdir))
        if failed is not None:
            raise VddkUnavailable(failed.tried, failed.config_key)  # fresh: no growing traceback
        if _library is None:
            try:
                _library = VddkLibrary(libdir)
            except VddkUnavailable as exc:
                _failed[str(libdir)] = exc
                raise
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
