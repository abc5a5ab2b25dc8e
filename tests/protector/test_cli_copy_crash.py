"""`vigil copy --to NAME` into S3 when the S3 server dies in the middle of a point: a clear
error and exit 1; the copy stays consistent (verify clean, only whole points listed); the
next run after the server is back sends what is missing and the copy restores byte-exact.

The server is killed at an exact request — the 6th chunk upload of the second point — by a
loopback proxy in front of it (tests/s3_proxy.py), not by a timer racing the copy."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.protector.conftest import PASSWORD_ENV, VM_NAME, config_toml
from tests.protector.test_cli_s3 import ok, s3_rig, vigil
from tests.s3_proxy import IgnoringProxy
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer

MIB = 1024 * 1024
BUCKET = "vigil-copy-crash"


POLICY = f"""
[[policy]]
name = "vm0"
priority = 10
copy_to = ["cloud"]
[policy.select]
names = ["{VM_NAME}"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 5
[policy.copy_retention]
keep_last = 1
"""


class Killer:
    """Counts chunk uploads and kills the server at the `at`-th one, once armed."""

    def __init__(self, server: SeaweedServer) -> None:
        self.server = server
        self.armed = False
        self.at = 0
        self.uploads = 0
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> None:
        if method != "PUT" or "/chunks/" not in path or not self.armed:
            return
        with self._lock:
            self.uploads += 1
            if self.uploads == self.at and not self.killed.is_set():
                self.server.kill()  # this upload and every later request find no server
                self.killed.set()


@pytest.fixture
def weed(tmp_path: Path) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path / "weed") as server:
        server.make_bucket(BUCKET, lock=True)
        yield server


def cloud_table(head: str, endpoint: str) -> str:
    return (
        f'{head}\nurl = "s3://{BUCKET}/copy"\npassphrase_env = "VIGIL_TEST_PASS_CLOUD"\n'
        f'[{head.strip("[]")}.s3]\nendpoint = "{endpoint}"\n'
        'access_key_env = "VIGIL_TEST_S3_ACCESS"\nsecret_key_env = "VIGIL_TEST_S3_SECRET"\n'
        "object_lock_days = 1\nmax_attempts = 2\nconnect_timeout = 2\nread_timeout = 10\n"
    )


async def test_copy_with_the_s3_server_killed_mid_point_then_resumed(
    vcsim_fresh: Any, weed: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcsim_fresh.password)
    monkeypatch.setenv("VIGIL_TEST_PASS", "site passphrase")
    monkeypatch.setenv("VIGIL_TEST_PASS_CLOUD", "cloud passphrase")
    monkeypatch.setenv("VIGIL_TEST_S3_ACCESS", ACCESS_KEY)
    monkeypatch.setenv("VIGIL_TEST_S3_SECRET", SECRET_KEY)
    (tmp_path / "policies").mkdir()
    killer = Killer(weed)
    base = config_toml(vcsim_fresh, io_threads=1).replace('[repository]\npath = "repo"\n', "")
    with IgnoringProxy(weed.endpoint, ACCESS_KEY, SECRET_KEY, strip=False, before=killer) as px:
        site = tmp_path / "vigil.toml"
        site.write_text(
            base
            + '[repository]\npath = "repo"\npassphrase_env = "VIGIL_TEST_PASS"\n'
            + cloud_table("[copies.cloud]", px.endpoint)
        )
        await ok(site, "init")
        await ok(site, "init", "--copy", "cloud")
        rig = await s3_rig(vcsim_fresh, site)
        try:
            first = random.Random(1).randbytes(4 * MIB)
            await rig.prepare(4 * MIB, first)
            p1 = (await ok(site, "backup", VM_NAME, "--json"))["id"]
            second = random.Random(2).randbytes(16 * MIB)
            await rig.prepare(16 * MIB, second)
            p2 = (await ok(site, "backup", VM_NAME, "--full", "--json"))["id"]

            # The first point's 4 chunks go up whole; the server dies at the second's 6th.
            killer.armed, killer.at = True, 4 + 6
            code, out, err = await vigil(site, "copy", "--to", "cloud")
            assert killer.killed.is_set() and code == 1, (code, out, err[-2000:])
            assert f"copied {p1}" in err and f"copied {p2}" not in err
            [line] = [x for x in err.splitlines() if x.startswith("vigil: ")]
            assert line.startswith(f"vigil: copy to cloud (s3://{BUCKET}/copy) stopped:")
            assert "did not answer" in line and "run the backup again" not in line
            assert "1 point(s) were copied whole before that" in line
            assert "Run `vigil copy --to cloud` again once the storage answers" in line

            weed.start()
            # The copy as a repository of its own: only the whole point, verify clean.
            cloud = tmp_path / "cloud.toml"
            cloud.write_text(base + cloud_table("[repository]", weed.endpoint))
            assert [p["id"] for p in await ok(cloud, "list", "--json")] == [p1]
            await ok(cloud, "verify", "--read-data")

            # The next run sends only what is missing and completes.
            killer.armed = False
            again = await ok(site, "copy", "--to", "cloud", "--json")
            assert again["copied"] == [p2] and again["present"] == 1 and not again["problems"]
            assert 0 < again["chunks_sent"] <= 16
            assert sorted(p["id"] for p in await ok(cloud, "list", "--json")) == [p1, p2]
            await ok(cloud, "verify", "--read-data")
            for point, data, name in ((p1, first, "crash-p1"), (p2, second, "crash-p2")):
                await ok(cloud, "restore", point, "--new-name", name, "--verify")
                got = await rig.read_flat(await rig.vm(name), len(data))
                assert got[: len(data)] == data

            # `vigil prune --copy` applies copy_retention (keep 1) to the copy, the primary
            # keeps its 5; the copy's object lock (a day) keeps the older point whole.
            (tmp_path / "policies" / "p.toml").write_text(POLICY)
            primary = await ok(site, "prune", "--dry-run", "--json")
            assert not [d for d in primary["decisions"] if d["delete"]]
            planned = await ok(site, "prune", "--copy", "cloud", "--dry-run", "--json")
            assert {d["point_id"]: d["delete"] for d in planned["decisions"]} == {
                p1: True,
                p2: False,
            }
            text = await ok(site, "prune", "--copy", "cloud")
            assert "under object lock" in text
            assert sorted(p["id"] for p in await ok(cloud, "list", "--json")) == [p1, p2]
        finally:
            await rig.session.close()
