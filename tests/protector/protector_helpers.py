"""Helpers the protector tests import (a conftest module name is not unique)."""

from __future__ import annotations

from pathlib import Path


def vddk_open_handles(distrib: Path) -> int:
    """How many disk handles the fake VixDiskLib has open in this process."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef("int FakeVixDiskLib_OpenHandles(void);")
    lib = ffi.dlopen(str(distrib / "lib64" / "libvixDiskLib.so.8"))
    return int(lib.FakeVixDiskLib_OpenHandles())
