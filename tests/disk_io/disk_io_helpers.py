"""Helpers for the disk_io tests."""

from __future__ import annotations

from pathlib import Path


def make_disk(
    ds_dir: Path,
    name: str,
    capacity: int,
    data: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    descriptor: str = "",
) -> Path:
    """A sparse `<name>-flat.vmdk` of `capacity` bytes with `data` written at offsets."""
    vm_dir = ds_dir / name
    vm_dir.mkdir(parents=True, exist_ok=True)
    (vm_dir / f"{name}.vmdk").write_text(descriptor)
    flat = vm_dir / f"{name}-flat.vmdk"
    with open(flat, "wb") as f:
        f.truncate(capacity)
        for off, blob in data:
            f.seek(off)
            f.write(blob)
    return flat
