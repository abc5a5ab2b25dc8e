"""The S3 backend against a real SeaweedFS on loopback: the same behaviour as the local
backend (write-once, get, range, paginated listing, delete), the If-None-Match probe, and
a server killed under a write."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from repository.backend import LocalBackend, open_backend
from repository.errors import ObjectNotFoundError
from repository.s3 import (
    ConditionalWriteUnsupportedError,
    S3Backend,
    S3BackendError,
    S3ConfigError,
    S3UnavailableError,
    open_s3_backend,
)
from tests.s3_proxy import IgnoringProxy
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer

# Keys of the repository's shapes (the local backend refuses any other).
VM1, VM2 = "1" * 16, "2" * 16
CHUNK_KEY = "chunks/ab/ab" + "c" * 62
INDEX_KEY = "indexes/" + "1" * 64


def _point(vm: str, seq: int) -> str:
    return f"{vm}-20260101T000000Z-{seq:06d}"


NOPE, YES = f"manifests/{_point(VM1, 7)}", f"manifests/{_point(VM1, 8)}"


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket("plain")
        yield server


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, weed: SeaweedServer, tmp_path: Path
) -> S3Backend | LocalBackend:
    if request.param == "local":
        (tmp_path / "objects").mkdir(mode=0o700)  # the repository root exists (vigil init)
        return LocalBackend(tmp_path / "objects")
    return open_s3_backend(weed.options("plain", f"t-{os.urandom(4).hex()}"))


def test_put_if_absent_is_write_once(backend: S3Backend | LocalBackend) -> None:
    assert backend.put_if_absent(CHUNK_KEY, b"first") is True
    assert backend.put_if_absent(CHUNK_KEY, b"second") is False
    assert backend.get(CHUNK_KEY) == b"first"
    backend.replace(CHUNK_KEY, b"healed")
    assert backend.get(CHUNK_KEY) == b"healed"


def test_concurrent_writers_one_wins(backend: S3Backend | LocalBackend) -> None:
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: backend.put_if_absent("config", b"w%d" % i), range(8)))
    assert won.count(True) == 1
    assert backend.get("config") == b"w%d" % won.index(True)


def test_get_missing_exists_touch(backend: S3Backend | LocalBackend) -> None:
    with pytest.raises(ObjectNotFoundError, match=NOPE):
        backend.get(NOPE)
    assert not backend.exists(NOPE)
    assert not backend.touch(NOPE)
    backend.put_if_absent(YES, b"m")
    assert backend.exists(YES) and backend.touch(YES)


def test_range_reads(backend: S3Backend | LocalBackend) -> None:
    data = bytes(range(256)) * 40
    backend.put_if_absent(INDEX_KEY, data)
    assert backend.get_range(INDEX_KEY, 0, 10) == data[:10]
    assert backend.get_range(INDEX_KEY, 1000, 777) == data[1000:1777]
    assert backend.get_range(INDEX_KEY, len(data) - 5, 100) == data[-5:]


def test_list_by_prefix_and_delete(backend: S3Backend | LocalBackend) -> None:
    a1, b1, a2 = _point(VM1, 1), _point(VM1, 2), _point(VM2, 1)
    for key in (f"manifests/{a1}", f"manifests/{b1}", f"manifests/{a2}", f"tombstones/{a1}"):
        backend.put_if_absent(key, key.encode())
    got = sorted((i.key, i.size) for i in backend.list(f"manifests/{VM1}-"))
    assert got == [(f"manifests/{a1}", 50), (f"manifests/{b1}", 50)]
    assert all(i.mtime > 1.7e9 for i in backend.list("manifests/"))
    backend.delete(f"manifests/{a1}")
    backend.delete(f"manifests/{a1}")  # absent: not an error
    assert sorted(i.key for i in backend.list("manifests/")) == [
        f"manifests/{b1}",
        f"manifests/{a2}",
    ]
    # The empty prefix lists every object, in subdirectories too (the daemon's size walk;
    # the local backend once listed only the top-level `config` for it).
    backend.put_if_absent(INDEX_KEY, b"index")
    assert sorted(i.key for i in backend.list("")) == sorted(
        [f"manifests/{b1}", f"manifests/{a2}", f"tombstones/{a1}", INDEX_KEY]
    )


def test_bad_keys_refused(backend: S3Backend | LocalBackend) -> None:
    for key in ("/abs", "chunks/../config"):
        with pytest.raises(ValueError, match=r"bad object key|not a repository object key"):
            backend.put_if_absent(key, b"x")


def test_listing_pages_past_1000_keys(weed: SeaweedServer) -> None:
    b = open_s3_backend(weed.options("plain", "many"))
    keys = [f"chunks/{i % 7:02x}/{i:08x}" for i in range(1234)]
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda k: b.put_if_absent(k, b"c"), keys))
    before = b.calls["ListObjectsV2"]
    assert sorted(i.key for i in b.list("chunks/")) == sorted(keys)
    assert b.calls["ListObjectsV2"] - before == 2  # two pages: 1000 + 234
    assert len(list(b.list("chunks/03/"))) == len([k for k in keys if k.startswith("chunks/03/")])


def test_prefixes_are_separate_repositories(weed: SeaweedServer) -> None:
    a = open_s3_backend(weed.options("plain", "sep/a"))
    b = open_s3_backend(weed.options("plain", "sep/ab"))
    a.put_if_absent("config", b"a")
    assert not b.exists("config")
    assert [i.key for i in a.list("")] == ["config"]


def test_open_backend_factory_reads_credentials_from_env(
    weed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_S3_ACCESS", ACCESS_KEY)
    monkeypatch.setenv("T_S3_SECRET", SECRET_KEY)
    table = {
        "endpoint": weed.endpoint,
        "access_key_env": "T_S3_ACCESS",
        "secret_key_env": "T_S3_SECRET",
    }
    b = open_backend("s3://plain/factory", table)
    assert isinstance(b, S3Backend)
    assert b.put_if_absent("config", b"c")
    assert SECRET_KEY not in repr(b) and SECRET_KEY not in repr(b.opts)


def test_wrong_secret_is_a_clear_error(weed: SeaweedServer) -> None:
    opts = replace(weed.options("plain", "x"), secret_key="not-the-secret")
    with pytest.raises(Exception, match="check the access key, secret key") as err:
        open_s3_backend(opts)
    assert "not-the-secret" not in str(err.value)


def test_missing_bucket_is_a_clear_error(weed: SeaweedServer) -> None:
    with pytest.raises(S3ConfigError, match="bucket 'no-such-bucket' is not usable"):
        open_s3_backend(weed.options("no-such-bucket"))


def test_probe_refuses_a_service_that_ignores_if_none_match(weed: SeaweedServer) -> None:
    with IgnoringProxy(weed.endpoint, ACCESS_KEY, SECRET_KEY) as proxy:
        opts = replace(weed.options("plain", "behind-proxy"), endpoint=proxy.endpoint)
        # The look-alike works for plain reads and writes...
        unprobed = open_s3_backend(opts, probe=False)
        assert unprobed.put_if_absent("k", b"1") and unprobed.put_if_absent("k", b"2")
        assert unprobed.get("k") == b"2"  # ...but overwrote a write-once object.
        with pytest.raises(ConditionalWriteUnsupportedError, match="ignores If-None-Match"):
            open_s3_backend(opts)
    assert not list(open_s3_backend(weed.options("plain", "behind-proxy")).list("locks/"))


def test_server_killed_mid_write_gives_a_typed_error(tmp_path: Path) -> None:
    with SeaweedServer(tmp_path) as server:
        server.make_bucket("killme")
        b = open_s3_backend(server.options("killme", max_attempts=2, connect_timeout=2))
        for i in range(5):
            assert b.put_if_absent(f"chunks/{i}", b"x" * 1000)
        server.kill()
        with pytest.raises(S3UnavailableError, match=r"chunks/5.*did not answer after 2 attempts"):
            b.put_if_absent("chunks/5", b"x" * 1000)
        with pytest.raises(S3UnavailableError):
            b.get("chunks/0")
        server.start()
        assert b.get("chunks/4") == b"x" * 1000
        assert b.put_if_absent("chunks/5", b"x" * 1000)


def test_throttling_and_5xx_are_retried_with_backoff(weed: SeaweedServer) -> None:
    with IgnoringProxy(weed.endpoint, ACCESS_KEY, SECRET_KEY, strip=False) as proxy:
        opts = replace(weed.options("plain", "throttled", max_attempts=4), endpoint=proxy.endpoint)
        b = open_s3_backend(opts)  # the probe still sees If-None-Match honoured
        proxy.failures_left = 3
        assert b.put_if_absent("chunks/t", b"after three 503s")
        assert b.calls["PutObject"] >= 4  # every attempt counted
        assert b.get("chunks/t") == b"after three 503s"
        proxy.failures_left = 4  # more than max_attempts: a typed error naming the object
        with pytest.raises(S3BackendError, match="chunks/u"):
            b.put_if_absent("chunks/u", b"x")


def test_versioned_bucket_delete_removes_every_version(weed: SeaweedServer) -> None:
    weed.make_bucket("versioned", versioned=True)
    b = open_s3_backend(weed.options("versioned", "v"))
    assert b.versioned
    b.put_if_absent("chunks/v", b"1")
    b.replace("chunks/v", b"2")
    b.delete("chunks/v")
    left = weed.client().list_object_versions(Bucket="versioned", Prefix="v/chunks/v")
    assert not left.get("Versions") and not left.get("DeleteMarkers")
