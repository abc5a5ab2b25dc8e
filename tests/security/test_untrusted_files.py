"""Files another user controls are never trusted (issue 19, items 9 and 10): a ./vigil.toml
planted in a directory where root runs vigil, a VDDK directory another user can replace,
and symlinks planted where vigil writes an export or opens a datastore file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from disk_io import DiskLocation, TransportUnavailable
from disk_io.errors import DiskIoError, UntrustedLibrary
from disk_io.filedisk import FileDisk, open_file_disk
from disk_io.vddk import VddkLibrary
from protector.config import ConfigError, load_config
from repository.errors import RepositoryError
from tests.repository.repo_helpers import new_repo, vm, write_point
from tests.usability.clihelp import vigil

OTHER_UID = 65534  # nobody
CONFIG = """
[vcenter]
url = "https://vc.example.com/sdk"
user = "backup@vsphere.local"
password_env = "VIGIL_TEST_PW"
[repository]
path = "repo"
[policies]
path = "pol"
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def config_in(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "vigil.toml"
    p.write_text(CONFIG)
    return p


@needs_root
def test_a_config_owned_by_another_user_is_refused_naming_the_file_and_the_fix(tmp_path):
    cfg = config_in(tmp_path / "cwd")
    os.chown(cfg, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    msg = str(exc.value)
    assert str(cfg) in msg and f"uid {OTHER_UID}" in msg and "chown" in msg
    # ... and through the CLI, reading ./vigil.toml from the current directory as root:
    r = vigil("inventory", cwd=cfg.parent)
    assert r.returncode == 2 and "owned by uid 65534" in r.stderr and "chown" in r.stderr
    os.chown(cfg, 0, 0)
    assert load_config(cfg).vcenter.user == "backup@vsphere.local"


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_config_writable_by_group_or_others_is_refused(tmp_path, mode):
    cfg = config_in(tmp_path)
    cfg.chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert "writable by group or others" in str(exc.value) and f"chmod go-w {cfg}" in str(exc.value)
    cfg.chmod(0o644)
    load_config(cfg)


@needs_root
def test_a_config_in_a_directory_another_user_owns_is_refused(tmp_path):
    """Whoever owns the directory can swap the file, even one root owns."""
    cfg = config_in(tmp_path / "theirs")
    os.chown(cfg.parent, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=r"directory .* is owned by uid 65534"):
        load_config(cfg)


@needs_root
def test_a_vddk_directory_another_user_owns_is_not_loaded(tmp_path, fake_distrib):
    """The library is refused before dlopen (its constructors would run as root)."""
    import shutil

    distrib = tmp_path / "vddk"
    shutil.copytree(fake_distrib, distrib)
    lib = distrib / "lib64" / "libvixDiskLib.so.8"
    os.chown(lib, OTHER_UID, OTHER_UID)
    with pytest.raises(UntrustedLibrary) as exc:
        VddkLibrary(distrib)
    assert str(lib) in str(exc.value) and "chown" in str(exc.value)
    os.chown(lib, 0, 0)
    os.chmod(distrib / "lib64", 0o777)
    with pytest.raises(UntrustedLibrary, match="writable by group or others"):
        VddkLibrary(distrib)
    os.chmod(distrib / "lib64", 0o755)
    VddkLibrary(distrib)  # a trusted copy loads


def test_export_force_does_not_follow_a_symlink(tmp_path):
    repo = new_repo(tmp_path / "repo", passphrase=None)
    point = write_point(repo, vm(1), {"d": b"x" * 70000})
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "out.raw"
    link.symlink_to(victim)
    with pytest.raises(RepositoryError, match="symbolic link"):
        repo.export_raw(point, "d", link, overwrite=True)
    assert victim.read_bytes() == b"precious" and link.is_symlink()


def test_the_file_transport_does_not_follow_links_out_of_the_datastore(tmp_path):
    ds = tmp_path / "DS1"
    (ds / "vm1").mkdir(parents=True)
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:secret" + bytes(4085))
    (ds / "vm1" / "vm1-flat.vmdk").symlink_to(secret)
    loc = DiskLocation("DC0", "DS1", "vm1/vm1.vmdk", 4096, "vm-1")
    with pytest.raises(TransportUnavailable, match="outside datastore mount"):
        open_file_disk(loc, {"DS1": str(ds)}, writable=True)
    # A link that stays inside is refused too: only the disk files themselves are opened.
    (ds / "vm1" / "vm1-flat.vmdk").unlink()
    (ds / "real-flat.vmdk").write_bytes(bytes(4096))
    (ds / "vm1" / "vm1-flat.vmdk").symlink_to(ds / "real-flat.vmdk")
    with pytest.raises(TransportUnavailable, match="symbolic link"):
        open_file_disk(loc, {"DS1": str(ds)})
    with pytest.raises(DiskIoError, match="symbolic link"):  # swapped in after the check
        FileDisk(ds / "vm1" / "vm1-flat.vmdk", 4096, writable=True)
    # A mount path that is itself a link (ESXi's /vmfs/volumes/NAME) is fine.
    (ds / "vm1" / "vm1-flat.vmdk").unlink()
    (ds / "vm1" / "vm1-flat.vmdk").write_bytes(bytes(4096))
    (tmp_path / "DS1-link").symlink_to(ds)
    with open_file_disk(loc, {"DS1": str(tmp_path / "DS1-link")}) as disk:
        assert disk.read(0, 512) == bytes(512)
