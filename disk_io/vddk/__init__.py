"""VixDiskLib through cffi (ABI mode): the library, its threading rules, and a disk handle."""

from .disk import VddkDisk, cleanup, end_access, prepare_for_access
from .library import VddkLibrary, candidate_paths, get_library, loaded_library

__all__ = [
    "VddkDisk",
    "VddkLibrary",
    "candidate_paths",
    "cleanup",
    "end_access",
    "get_library",
    "loaded_library",
    "prepare_for_access",
]
