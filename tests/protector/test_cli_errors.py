"""The CLI never shows a Python traceback: unexpected vSphere, repository and file errors
become one line naming the object at fault (exit 2 when vCenter cannot be reached, else 1),
and `--json` gets a JSON error object. A restore as a new VM that fails after CreateVM_Task
destroys the half-built VM (unless --keep-failed) and names it."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.cli.app import EXIT_PROBLEM, EXIT_USAGE
from repository.errors import CorruptObjectError
from watcher.soap import TlsPinError, VsphereConnectionError, VsphereFault

MIB = 1024 * 1024
Rig = Any  # the `rig` fixture of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")


async def vigil(rig: Rig, *args: str) -> tuple[int, str, str]:
    proc = await anyio.run_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), *args], check=False, env=dict(os.environ)
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("vigil: ")]
    assert len(lines) == 1, err
    return lines[0]


async def backed_up(rig: Rig, size: int = 4 * MIB) -> tuple[Any, str, bytes]:
    data = random.Random(5).randbytes(size)
    vm = await rig.prepare(size, data)
    return vm, (await rig.backup(vm)).point_id, data


def chunk_files(rig: Rig) -> list[Path]:
    root = Path(rig.cfg.repository.path) / "chunks"
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_list_of_an_unknown_vm_is_an_empty_json_array(rig: Rig) -> None:
    rc, out, err = await vigil(rig, "list", "nosuchvm", "--json")
    assert (rc, json.loads(out)) == (0, []), err
    rc, out, err = await vigil(rig, "list", "nosuchvm")
    assert rc == 0 and "nosuchvm" in out, err


async def test_file_error_is_one_line_naming_the_file(rig: Rig) -> None:
    _vm, point, _ = await backed_up(rig)
    target = rig.tmp / "no-such-dir" / "disk.img"
    rc, _out, err = await vigil(rig, "export", point, "-o", str(target))
    assert rc == EXIT_PROBLEM
    assert str(target) in one_line_error(err)


async def test_repository_damage_is_one_line_and_json_error_object(rig: Rig) -> None:
    _vm, point, _ = await backed_up(rig)
    manifest = Path(rig.cfg.repository.path) / "manifests" / point
    manifest.write_bytes(b"garbage" + manifest.read_bytes()[7:])
    rc, _out, err = await vigil(rig, "restore", point, "--new-name", "x")
    assert rc == EXIT_PROBLEM
    assert point in one_line_error(err)
    rc, out, err = await vigil(rig, "restore", point, "--new-name", "x", "--json")
    assert rc == EXIT_PROBLEM, err
    error = json.loads(out)["error"]
    assert error["exit_code"] == EXIT_PROBLEM and point in error["message"]
    assert error["type"] == "repository"


async def test_vsphere_fault_is_one_line(rig: Rig) -> None:
    vm, point, _ = await backed_up(rig)
    # A template cannot be powered on: PowerOnVM_Task faults (InvalidState). (CBT off: the
    # restore then has no tracking to reset, which a template would refuse first.)
    await rig.power(vm, False)
    await rig.set_cbt(vm, False)
    await rig.session.call(vm, "MarkAsTemplate")
    rc, out, err = await vigil(rig, "restore", point, "--to-existing", "--power-on", "--json")
    assert rc == EXIT_PROBLEM, (out, err)
    assert "PowerOnVM_Task" in one_line_error(err)
    assert json.loads(out)["error"]["type"] == "vsphere"


async def test_placement_of_the_wrong_kind_is_refused(rig: Rig) -> None:
    _vm, point, _ = await backed_up(rig)
    rc, out, err = await vigil(
        rig, "restore", point, "--new-name", "x", "--folder", "/DC0/host/DC0_H0", "--json"
    )
    assert rc == EXIT_USAGE, (out, err)
    line = one_line_error(err)
    assert "/DC0/host/DC0_H0" in line and "not a folder" in line


def test_connection_errors_exit_2_and_other_errors_exit_1() -> None:
    from protector.cli.app import describe_error

    assert describe_error(VsphereConnectionError("POST https://vc/sdk: refused"))[1] == EXIT_USAGE
    assert describe_error(TlsPinError("certificate of vc does not match"))[1] == EXIT_USAGE
    msg, code, kind = describe_error(VsphereFault("FileFault", "nope", method="CreateVM_Task"))
    assert (code, kind) == (EXIT_PROBLEM, "vsphere") and "CreateVM_Task" in msg
    msg, code, kind = describe_error(FileNotFoundError(2, "No such file", "/x/y"))
    assert (code, kind) == (EXIT_PROBLEM, "os") and "/x/y" in msg
    msg, code, kind = describe_error(CorruptObjectError("chunks/ab/cd", "bad CRC"))
    assert (code, kind) == (EXIT_PROBLEM, "repository") and "chunks/ab/cd" in msg


async def vm_names(rig: Rig) -> set[str]:
    from watcher.inventory import read_inventory

    return {v.name for v in (await read_inventory(rig.session)).vms()}


@pytest.mark.parametrize("keep", [False, True])
async def test_failed_restore_as_new_destroys_the_half_built_vm(rig: Rig, keep: bool) -> None:
    _vm, point, _ = await backed_up(rig)
    for f in chunk_files(rig):  # every chunk damaged: the first disk write fails
        f.write_bytes(f.read_bytes()[:-1] + b"\0")
    args = ["restore", point, "--new-name", "half", "--json"] + (["--keep-failed"] if keep else [])
    rc, out, err = await vigil(rig, *args)
    assert rc == EXIT_PROBLEM, (out, err)
    line = one_line_error(err)
    message = json.loads(out)["error"]["message"]
    assert "half" in line and "half" in message
    if keep:
        assert "half" in await vm_names(rig)
        assert "kept" in message
    else:
        assert "half" not in await vm_names(rig)
        assert "destroyed" in message


async def test_an_unknown_datastore_is_refused_before_anything_is_created(rig: Rig) -> None:
    """CreateVM_Task with a datastore that does not exist fails deep in vCenter (the
    simulator even drops the connection): name the datastore and list the real ones."""
    _vm, point, _ = await backed_up(rig)
    rc, out, err = await vigil(
        rig, "restore", point, "--new-name", "nods", "--datastore", "NoSuchDS", "--json"
    )
    assert rc == EXIT_USAGE, (out, err)
    line = one_line_error(err)
    assert "NoSuchDS" in line and "LocalDS_0" in line
    assert "nods" not in await vm_names(rig)


async def test_without_placement_options_the_vm_goes_where_its_datastore_is(rig: Rig) -> None:
    """The original VM is gone: the new one goes into the datastore's datacenter, in the
    pool of a host that can reach that datastore (not next to an arbitrary VM)."""
    vm, point, data = await backed_up(rig)
    await rig.power(vm, False)
    await rig.run(vm, "Destroy_Task")
    rc, out, err = await vigil(rig, "restore", point, "--new-name", "placed", "--json")
    assert rc == 0, (out, err)
    new = json.loads(out)["vm"]
    props = await rig.session.properties(
        rig.session.moref("VirtualMachine", new["moref"]), ["datastore", "runtime.host"]
    )
    ds_hosts = await rig.session.properties(props["datastore"][0], ["host", "name"])
    assert ds_hosts["name"] == "LocalDS_0"
    assert props["runtime.host"]._moId in {m.key._moId for m in ds_hosts["host"]}
    new_vm = rig.session.moref("VirtualMachine", new["moref"])
    assert await rig.read_flat(new_vm, len(data)) == data
