"""Repository lock objects and head objects on an object-locked SeaweedFS bucket: locks are
write-once objects without retention, refreshed by writing a new object, released and
(when stale) removed by deleting every version; locked heads do not stop a prune."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from repo_helpers import CHUNK, FAST_KDF, PASSPHRASE, make_disk, vm, write_point

from repository import KeepLast, Repository, prune
from repository.errors import RepositoryBusyError
from repository.s3 import S3Backend, open_s3_backend
from tests.s3_server import SeaweedServer


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket("immutable", lock=True)
        yield server


def _versions(weed: SeaweedServer, prefix: str) -> list[str]:
    """Every version and delete marker under `prefix`, as a plain client sees them."""
    page = weed.client().list_object_versions(Bucket="immutable", Prefix=prefix)
    return [v["Key"] for kind in ("Versions", "DeleteMarkers") for v in page.get(kind, ())]


def _repo(backend: S3Backend, state: Path) -> Repository:
    return Repository.init(
        "s3", chunk_size=CHUNK, passphrase=PASSPHRASE, kdf=FAST_KDF, backend=backend,
        state_dir=state,
    )  # fmt: skip


def test_lock_refreshed_by_a_new_object_and_released_without_trace(
    weed: SeaweedServer, tmp_path: Path
) -> None:
    backend = open_s3_backend(weed.options("immutable", "locks", object_lock_days=5))
    repo = _repo(backend, tmp_path / "a")
    repo.lock_timing = {"refresh_every": 0.2}
    lock = repo.lock(purpose="long backup")
    first = lock.key
    assert first is not None and backend.retention_of(first) is None  # no retention
    # The refresher writes the new object, then deletes the old one: wait for both steps
    # rather than reading between them.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (lock.key == first or backend.exists(str(first))):
        time.sleep(0.05)
    assert lock.key != first and not backend.exists(str(first))
    other = Repository.open("s3", PASSPHRASE, tmp_path / "b", backend=backend)
    with pytest.raises(RepositoryBusyError, match="long backup"):
        other.lock(exclusive=True, timeout=0.3)
    lock.release()
    assert _versions(weed, "locks/locks/") == []  # every version gone, no delete marker
    other.lock(exclusive=True, timeout=0.3).release()


def test_a_stale_lock_is_removed_on_an_immutable_bucket(
    weed: SeaweedServer, tmp_path: Path
) -> None:
    """A backup killed holding its lock: the next taker deletes the stale object."""
    backend = open_s3_backend(weed.options("immutable", "stale", object_lock_days=5))
    repo = _repo(backend, tmp_path / "a")
    dead = {
        "kind": "shared",
        "host_id": repo.state.host_id(),
        "hostname": "here",
        "pid": 999999,  # gone: stale at once on its own host
        "pid_start": "1",
        "purpose": "killed backup",
        "created": datetime.now(UTC).isoformat(),
    }
    key = "locks/" + "d" * 32
    assert backend.put_if_absent(key, json.dumps(dead).encode())
    repo.lock(exclusive=True, timeout=0.5).release()
    assert not backend.exists(key)
    assert _versions(weed, "stale/locks/") == []


def test_prune_with_locked_heads_keeps_them_and_finishes(
    weed: SeaweedServer, tmp_path: Path
) -> None:
    backend = open_s3_backend(weed.options("immutable", "heads", object_lock_days=5))
    repo = _repo(backend, tmp_path / "a")
    p1 = write_point(repo, vm(), {"d0": make_disk(3 * CHUNK, seed=1)})
    p2 = write_point(repo, vm(), {"d0": make_disk(3 * CHUNK, seed=2)})
    assert backend.retention_of(f"heads/{p1}") is not None
    result = prune(repo, lambda _vm, _p: KeepLast(1), now=datetime.now(UTC) + timedelta(hours=2))
    assert any(p1 in item for item in result.locked)  # reported, kept
    assert backend.exists(f"heads/{p1}") and backend.exists(f"heads/{p2}")
    assert repo.high_water(vm().key)[0] == 2
