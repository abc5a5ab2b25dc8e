"""The fake VixDiskLib (C source shipped with the package) and a helper that builds it.

Only tests and the demo use it; production loads VMware's library.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fakevixdisklib.c")


def build(distrib: Path, *, soname: str = "libvixDiskLib.so.8", old: bool = False) -> Path:
    """Compile the fake into `<distrib>/lib64/<soname>` (needs gcc); returns the .so path."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("building the fake VixDiskLib needs gcc (apt-get install gcc)")
    out = distrib / "lib64" / soname
    out.parent.mkdir(parents=True, exist_ok=True)
    major = soname.rsplit(".so.", 1)[-1].split(".")[0]
    cmd = [cc, "-shared", "-fPIC", "-O2", "-pthread", f"-DFAKE_MAJOR={int(major)}"]
    cmd += ["-o", str(out), str(SOURCE)]
    if old:
        cmd.insert(1, "-DFAKE_OLD")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE} failed:\n{proc.stderr}")
    return out
