"""VixDiskLib through cffi (ABI mode): the library, its threading rules, and a disk handle.

The names below are loaded on first use (PEP 562 `__getattr__`): `protector.config`
imports `disk_io.vddk.thumbprint` for every command, and importing the package must not
drag in cffi and the library's ABI declarations (~0.19 s of start-up) for a backup
that never opens a disk through VDDK."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "VddkDisk": ".disk",
    "cleanup": ".disk",
    "end_access": ".disk",
    "prepare_for_access": ".disk",
    "VddkLibrary": ".library",
    "candidate_paths": ".library",
    "get_library": ".library",
    "loaded_library": ".library",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(where, __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)
