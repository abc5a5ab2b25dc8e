"""On S3 a chunk is written with one request: the conditional PUT is its own check
(If-None-Match: a key that exists is refused untouched, 412), so no GET or HEAD goes
before it while chunks are mostly new. While they are mostly stored already (a second full
backup of the same disks) the check goes first again, so unchanged data is not uploaded
twice; a damaged chunk found by the write is healed as before. Counted on a real
SeaweedFS with the backend's own request counter."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from repo_helpers import CHUNK, FAST_KDF, PASSPHRASE

from repository import Repository, codec
from repository.codec import chunk_key
from repository.objects import ReuseOdds
from repository.s3 import S3Backend, open_s3_backend
from tests.s3_server import SeaweedServer


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket("puts")
        yield server


def repo_on(weed: SeaweedServer, prefix: str, state: Path) -> tuple[Repository, S3Backend]:
    backend = open_s3_backend(weed.options("puts", prefix))
    repo = Repository.init(
        state, chunk_size=CHUNK, passphrase=PASSPHRASE, kdf=FAST_KDF, backend=backend
    )
    return repo, backend


def store(repo: Repository, data: list[bytes], verify: bool) -> list[int]:
    return [repo.put_chunk(codec.object_id(repo.keys, d), d, verify) for d in data]


@pytest.mark.parametrize("verify", [True, False], ids=["full", "incremental"])
def test_a_new_chunk_costs_one_request(weed: SeaweedServer, tmp_path: Path, verify: bool) -> None:
    repo, backend = repo_on(weed, f"one-{verify}", tmp_path)
    data = [random.Random(i).randbytes(CHUNK) for i in range(20)]
    before = Counter(backend.calls)
    assert all(store(repo, data, verify))
    calls = Counter(backend.calls) - before
    assert calls == Counter({"PutObject": 20}), calls

    # The same chunks again: the first few writes are refused (412) and cost nothing
    # more for an incremental; then the odds turn and each is checked first, not uploaded.
    before = Counter(backend.calls)
    assert store(repo, data, verify) == [0] * 20
    calls = Counter(backend.calls) - before
    assert 1 <= calls["PutObject"] <= 7, calls
    check = "GetObject" if verify else "HeadObject"
    if verify:  # a full backup still reads back every chunk it reuses
        assert calls[check] == 20, calls
    else:
        assert calls[check] == 20 - calls["PutObject"], calls
    assert not repo.objects.reuse.likely_new()


def test_a_damaged_chunk_found_by_the_write_is_healed(weed: SeaweedServer, tmp_path: Path) -> None:
    repo, backend = repo_on(weed, "heal", tmp_path)
    data = random.Random(7).randbytes(CHUNK)
    cid = codec.object_id(repo.keys, data)
    assert repo.put_chunk(cid, data, True) > 0
    weed.client().put_object(Bucket="puts", Key=f"heal/{chunk_key(cid)}", Body=b"rot" * 100)
    repo.objects.reuse = ReuseOdds()  # chunks look new: the write goes first
    before = Counter(backend.calls)
    assert repo.put_chunk(cid, data, True) > 0  # healed: written again
    calls = Counter(backend.calls) - before
    assert calls["GetObject"] == 1 and calls["PutObject"] >= 2, calls
    assert repo.load_chunk(cid) == data


def test_a_local_repository_checks_first(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", chunk_size=CHUNK, passphrase=PASSPHRASE, kdf=FAST_KDF)
    assert repo.objects.put_first is None
    assert not getattr(repo.backend, "conditional_put", False)
