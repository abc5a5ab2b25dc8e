"""Fixtures for disk_io: the fake VixDiskLib compiled at test time, datastore trees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def ds_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$FAKEVDDK_ROOT: "[DS1] dir/x.vmdk" resolves to <root>/DS1/dir/x-flat.vmdk."""
    root = tmp_path / "datastores"
    (root / "DS1").mkdir(parents=True)
    monkeypatch.setenv("FAKEVDDK_ROOT", str(root))
    for var in ("FAKEVDDK_FAIL_OPEN", "FAKEVDDK_FAIL_READ_SECTOR", "FAKEVDDK_SLOW_READ_US"):
        monkeypatch.delenv(var, raising=False)
    yield root
