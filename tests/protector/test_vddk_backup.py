"""A backup and a restore through VDDK (the strict fake VixDiskLib over the simulator's
datastore) follow VMware's rules and the reference clients: the vCenter session, not a
password; the snapshot's MoRef for a running VM; PrepareForAccess before the first open and
EndAccess after the last close; VixDiskLib_Cleanup once; every control call on one thread;
the transport mode VDDK used recorded per disk."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.backup import BackupOptions, backup_vm
from protector.repoaccess import point_summary
from protector.restore import restore_to_existing

MIB = 1024 * 1024
# The calls VMware wants on one designated thread (docs/vddk.md, "Threads").
CONTROL = {
    "InitEx", "ConnectEx", "Open", "QueryAllocatedBlocks", "Close", "Disconnect", "Cleanup",
    "PrepareForAccess", "EndAccess", "Exit",
}  # fmt: skip
Rig = Any


def calls(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        tid, fn, rest = [*line.split(" ", 2), ""][:3]
        out.append((int(tid), fn, rest))
    return out


async def test_backup_and_restore_through_vddk_keep_vmwares_rules(
    vddk_rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = vddk_rig
    log = tmp_path / "vddk-calls.log"
    monkeypatch.setenv("FAKEVDDK_CALL_LOG", str(log))
    # Only this session is accepted, and the VM runs: reading needs the snapshot.
    monkeypatch.setenv("FAKEVDDK_EXPECT_COOKIE", rig.session.session_cookie)
    monkeypatch.setenv("FAKEVDDK_EXPECT_USER", rig.session.user)
    monkeypatch.setenv("FAKEVDDK_POWERED_ON", "1")
    monkeypatch.setenv("FAKEVDDK_MODES", "nbdssl:nbd")
    content = random.Random(7).randbytes(4 * MIB)
    vm = await rig.prepare(4 * MIB, content)

    result = await backup_vm(rig.ctx, vm, BackupOptions(quiesce=False))
    seen = calls(log)
    fns = [fn for _, fn, _ in seen if fn != "InitEx"]
    first_open = fns.index("ConnectEx")
    assert "PrepareForAccess" in fns[:first_open]
    assert fns[-1] == "EndAccess" and fns.count("EndAccess") == 1
    assert fns.count("Cleanup") <= 1
    control = {tid for tid, fn, _ in seen if fn in CONTROL}
    assert len(control) == 1  # the designated thread, and only it
    connect = next(rest for _, fn, rest in seen if fn == "ConnectEx")
    assert f"vmxSpec=moref={vm._moId} credType=2 user={rig.session.user}" in connect
    assert "snapshot=snapshot-" in connect and "readOnly=1" in connect
    [disk] = [d for d in point_summary(rig.repo.load_manifest(result.point_id))["disks"]]
    assert (disk["transport"], disk["transport_mode"]) == ("vddk", "nbdssl")

    # The restore writes (no snapshot: a restore writes the VM's current disks), bracketed too.
    log.unlink()
    rig.flat(await rig.disk(vm)).write_bytes(bytes(4 * MIB))  # the VM's disk, wiped
    await restore_to_existing(rig.ctx, result.point_id, vm, power_off=True, force=True)
    fns = [fn for _, fn, _ in calls(log)]
    assert fns[0] == "PrepareForAccess" and fns[-1] == "EndAccess"
    assert "ConnectEx" in fns and "Cleanup" not in fns  # once per process and server
    assert await rig.read_flat(vm, 4 * MIB) == content


def test_transport_vddk_table_is_read_and_checked(tmp_path: Path) -> None:
    import tomllib

    from protector.config import ConfigError, parse_config
    from protector.vsphere.disks import transport_settings

    base = (
        '[vcenter]\nurl = "https://vc.example/sdk"\nuser = "u"\npassword_env = "X"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "policies"\n'
    )
    path = str(tmp_path / "vigil.toml")
    cfg = parse_config(
        tomllib.loads(
            base + '[transport.vddk]\nmodes = "hotadd:nbdssl:nbd"\nthumbprint = "sha256"\n'
        ),
        path,
    )
    settings = transport_settings(cfg)
    assert settings.vddk_transport_modes == "hotadd:nbdssl:nbd"
    assert settings.vddk_thumbprint == "sha256"
    assert transport_settings(parse_config(tomllib.loads(base), path)).vddk_transport_modes is None
    bad = '[transport.vddk]\nmodes = "hotadd nbd"\nthumbprint = "md5"\nmode = "x"\n'
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(base + bad), path)
    text = str(exc.value)
    assert "transport.vddk.modes" in text and "transport.vddk.thumbprint" in text
    assert "transport.vddk.mode: unknown key" in text


async def test_metadata_goes_to_new_disks_only_without_identity_keys(
    vddk_rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed: set the disk's key/value data before writing the data of a disk a restore
    creates; an existing disk keeps its own. `uuid` names one disk and is never copied."""
    rig = vddk_rig
    log = tmp_path / "vddk-calls.log"
    monkeypatch.setenv("FAKEVDDK_CALL_LOG", str(log))
    monkeypatch.setenv("FAKEVDDK_POWERED_ON", "1")
    vm = await rig.prepare(2 * MIB, random.Random(8).randbytes(2 * MIB))
    flat = rig.flat(await rig.disk(vm))
    meta = Path(f"{flat}.meta")
    uuid = "uuid=60 00 C2 91 aa bb cc dd-ee ff 00 11 22 33 44 55\n"
    await anyio.Path(meta).write_text(uuid + "adapterType=lsilogic\n")
    point = (await backup_vm(rig.ctx, vm, BackupOptions(quiesce=False))).point_id
    saved = rig.repo.load_manifest(point).disks[0].metadata
    assert saved["uuid"].startswith("60 00 C2 91") and saved["adapterType"] == "lsilogic"

    log.unlink()
    await anyio.Path(meta).write_text(uuid + "adapterType=ide\n")
    await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True)
    assert "WriteMetadata" not in [fn for _, fn, _ in calls(log)]
    assert (
        "adapterType=ide" in await anyio.Path(meta).read_text()
    )  # the existing disk keeps its own

    # A new disk gets them (minus uuid): metadata_to_write below; the fake cannot open the
    # simulator's new, still empty disk files (their capacity is 0 until written).


def test_metadata_to_write() -> None:
    from protector.restore.diskwrite import metadata_to_write

    saved = {"uuid": "60 00", "longContentID": "abc", "adapterType": "lsilogic"}
    assert metadata_to_write(saved, fresh=True) == {"adapterType": "lsilogic"}
    assert metadata_to_write(saved, fresh=False) == {}
    assert metadata_to_write(None, fresh=True) == {}
