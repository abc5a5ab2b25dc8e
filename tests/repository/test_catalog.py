"""The catalog records points and can be rebuilt from the manifests alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from repo_helpers import CHUNK, make_disk, vm, write_point

from repository import Catalog, KeepLast, Repository, SkippedDisk, VmIdentity, prune
from repository.catalog import SCHEMA_VERSION
from repository.cli import catalog_rebuild_cmd


async def test_rebuild_recreates_points_disks_and_name_history(repo: Repository) -> None:
    write_point(repo, vm(1), {"d": make_disk(CHUNK, 1)})
    renamed = VmIdentity(vm(1).vcenter_uuid, vm(1).instance_uuid, "web-renamed", "/dc/vm/x", "vm-9")
    p2 = write_point(
        repo,
        renamed,
        {"d": make_disk(CHUNK, 2)},
        skipped_disks=[SkippedDisk("indep0", "independent disk")],
        policy="gold",
    )
    write_point(repo, vm(2), {"d": make_disk(CHUNK, 3)})
    prune(
        repo, lambda v, _p: KeepLast(1) if v.key == renamed.key else KeepLast(9), grace=timedelta(0)
    )

    outcome = await catalog_rebuild_cmd(repo.root, "correct horse battery staple")
    assert outcome.exit_code == 0 and outcome.data == (2, 1)
    catalog = await Catalog.for_repository(repo)
    try:
        live = await catalog.points(vm(1).key)
        assert [p["point_id"] for p in live] == [p2] and live[0]["policy"] == "gold"
        assert len(await catalog.points(vm(1).key, status="pruned")) == 1
        disks = {d["disk_key"]: d for d in await catalog.disks(p2)}
        assert disks["indep0"]["skipped_reason"] == "independent disk"
        assert disks["d"]["capacity"] == CHUNK
        names = [h["name"] for h in await catalog.vm_history(vm(1).key)]
        assert names == ["vm1", "web-renamed"]
        assert await catalog.known_heads() == {vm(1).key: 2, vm(2).key: 1}

        now = datetime.now(UTC)
        await catalog.record_job("j1", "backup", now, vm_key=vm(1).key)
        await catalog.record_job("j1", "backup", now, outcome="success", point_id=p2)
    finally:
        await catalog.close()


async def test_schema_is_versioned_and_reopens(repo: Repository) -> None:
    for _ in range(2):
        catalog = await Catalog.for_repository(repo)
        async with catalog.engine.connect() as conn:
            version = (await conn.exec_driver_sql("select version from schema_version")).scalar()
        await catalog.close()
        assert version == SCHEMA_VERSION
    assert (repo.root / "catalog.db").stat().st_mode & 0o777 == 0o600
