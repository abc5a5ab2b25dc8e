"""Datastore paths, "[LocalDS_0] vm/vm.vmdk": the one parser and formatter protector uses.

The form is vSphere's DatastorePath (see the vSphere Web Services API, "Datastore paths":
`[datastore] path`, the path relative to the datastore root, '/'-separated)."""

from __future__ import annotations

import posixpath


def split_datastore_path(file_name: str) -> tuple[str, str]:
    """'[LocalDS_0] vm/vm.vmdk' → ('LocalDS_0', 'vm/vm.vmdk'); a ValueError for other text."""
    if not file_name.startswith("[") or "]" not in file_name:
        raise ValueError(f"not a datastore path: {file_name!r}")
    ds, _, rest = file_name[1:].partition("]")
    return ds, rest.strip()


def datastore_path(datastore: str, path: str) -> str:
    """'[datastore] path'; a `path` that already names its datastore is kept as it is."""
    return path if path.startswith("[") else f"[{datastore}] {path}"


def join_datastore_path(directory: str, name: str) -> str:
    """A file `name` in the datastore directory `directory` ("[ds] dir")."""
    ds, rel = split_datastore_path(directory)
    return f"[{ds}] {posixpath.join(rel, name) if rel else name}"
