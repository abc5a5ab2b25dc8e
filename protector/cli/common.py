"""Checks the commands share, so a typical mistake ends in one line that names the config key
or object at fault and suggests the next step (a close match, the command that lists them)."""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from protector.config import Config, RepositoryConfig, load_config, resolve_path
from protector.errors import UserError

# Terminal control characters: C0 (ESC starts colour, cursor and title sequences; BEL, BS,
# CR rewrite what is shown), DEL, C1 (0x9b is a one-byte CSI on some terminals) and the
# Unicode bidi overrides that reorder a line ("Trojan Source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """`text` safe to print on a terminal: every control character (see _CONTROL) becomes a
    visible escape such as `\\x1b`. VM, folder, datastore and policy names come from vCenter
    or files that VM owners and other admins control; printed raw, `\\x1b]0;...` retitles
    the admin's terminal and cursor sequences can hide or forge lines of output. Tab stays;
    newline (and a carriage return) too with keep_newlines, for whole blocks of output."""
    if not keep_newlines:
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class CleanStream(io.TextIOBase):
    """A text stream that passes everything written through clean() (and, for stderr,
    through the log redaction): installed over stdout and stderr by `main`, so every printer
    of every command is covered, including ones added later. A write that starts with a
    carriage return keeps it (the progress line redraws itself that way)."""

    def __init__(self, inner: TextIO, *, redact: bool = False) -> None:
        self.inner = inner
        self.redact = redact

    def write(self, s: str) -> int:
        lead = "\r" if s.startswith("\r") else ""
        out = lead + clean(s[len(lead) :].replace("\r", "\\r"), keep_newlines=True)
        if self.redact:
            from protector.logs import redact_text

            out = redact_text(out)
        self.inner.write(out)
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    @property
    def buffer(self) -> Any:
        """The binary stream underneath, uncleaned: `vigil files get --stdout` writes a file's
        bytes there, and they must come out exactly as stored."""
        return self.inner.buffer

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.inner.encoding

    def writable(self) -> bool:
        return True


def config_of(args: argparse.Namespace) -> Config:
    """The configuration named by --config (else $VIGIL_CONFIG, else ./vigil.toml)."""
    return load_config(resolve_path(args.config))


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def json_option(p: argparse.ArgumentParser, help: str) -> None:
    """--json: the command's result as JSON on stdout (logs and errors stay on stderr)."""
    p.add_argument("--json", action="store_true", help=help)


def did_you_mean(wanted: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """A "; did you mean A or B?" hint with the closest candidates, or an empty string."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(wanted, pool, n=n, cutoff=cutoff)
    if not close:
        # Long ids differ from a typo in one character; a shared prefix is a match too.
        close = [c for c in pool if wanted and c.startswith(wanted)][:n]
    if not close:
        return ""
    return "; did you mean " + " or ".join(close) + "?"


def require_policies_path(cfg: Config) -> None:
    """A missing policies.path is a setup step not yet done, not a policy error."""
    if not Path(cfg.policies_path).exists():
        raise UserError(
            f"policies.path {cfg.policies_path} (set in {cfg.path}) does not exist; create it "
            "and put *.toml policies in it (start from policies.example/, see docs/policies.md)"
        )


def find_vm(vms: Sequence[Any], spec: str) -> Any:
    """vmlookup.find_vm, with the names closest to a mistyped one."""
    from protector.vsphere.vmlookup import VmNotFound
    from protector.vsphere.vmlookup import find_vm as lookup

    try:
        return lookup(vms, spec)
    except VmNotFound as exc:  # (an ambiguous name's message already lists the candidates)
        key = spec.strip()
        names = [v.path for v in vms] if key.startswith("/") else [v.name for v in vms]
        hint = did_you_mean(key, names)
        raise UserError(
            f"no VM {_what(key)} {key!r}{hint} (`vigil inventory` lists the VMs vigil can see)",
            exc.exit_code,
        ) from None


async def find_vm_live(session: Any, spec: str) -> Any:
    """vmfind.lookup_vm (one VM from vCenter without the whole inventory, with its tags),
    with the names or paths closest to a mistyped one."""
    from protector.vsphere.vmfind import closest, lookup_vm
    from protector.vsphere.vmlookup import MOREF_RE, UUID_RE, VmNotFound

    try:
        return await lookup_vm(session, spec)
    except VmNotFound as exc:
        key = spec.strip()
        hint = ""
        if not (UUID_RE.match(key) or MOREF_RE.match(key)):
            near = await closest(session, key)
            hint = "; did you mean " + " or ".join(near) + "?" if near else ""
        raise UserError(
            f"no VM {_what(key)} {key!r}{hint} (`vigil inventory` lists the VMs vigil can see)",
            exc.exit_code,
        ) from None


def _what(spec: str) -> str:
    from protector.vsphere.vmlookup import MOREF_RE, UUID_RE

    if spec.startswith("/"):
        return "at inventory path"
    if UUID_RE.match(spec):
        return "with UUID"
    return "with MoRef" if MOREF_RE.match(spec) else "with name"


POINT_HELP = "restore point: id, unique id prefix, `latest` or VM@latest (`vigil list`)"


async def require_point(repo: Any, spec: str) -> str:
    """The id of the point `spec` names (an id, a unique prefix, `latest`, VM@latest: see
    protector.pointref), else a UserError naming the candidates or the closest ids."""
    import anyio

    from protector.pointref import needs_manifests, resolve_point

    ids = await anyio.to_thread.run_sync(repo.list_points)
    manifests = await anyio.to_thread.run_sync(repo.manifests) if needs_manifests(spec) else []
    return resolve_point(spec, ids, manifests)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def copy_config(cfg: Config, name: str) -> RepositoryConfig:
    """The [copies.NAME] table, or a UserError listing the names there are."""
    rc = cfg.copies.get(name)
    if rc is None:
        known = ", ".join(sorted(cfg.copies)) or "none"
        raise UserError(
            f"no [copies.{name}] in {cfg.path} (copies configured: {known})"
            + did_you_mean(name, cfg.copies)
        )
    return rc


def check_repository_location(cfg: Config, *, create: bool) -> None:
    """Before opening: a repository path that can never work (under a file, not writable)
    is a configuration problem, reported with repository.path, not as an I/O error later.
    An s3:// repository is checked when opened (bucket, credentials, write-once probe)."""
    if not cfg.repository.url:
        check_location(cfg, cfg.repository, create=create)


def check_location(cfg: Config, rc: RepositoryConfig, *, create: bool) -> None:
    path = Path(rc.path)
    key = rc.key
    where = f"{key} {path} (set in {cfg.path})"
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{where} is not a directory; point {key} at a directory")
        if create and not os.access(path, os.W_OK | os.X_OK):
            raise UserError(
                f"{where} is not writable by this user; fix its ownership or permissions"
            )
        return
    if not create:
        return  # repoaccess says there is no repository yet, and which command creates one
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise UserError(
            f"{where} cannot be created: {base} is not a directory; point {key} "
            "at a directory this user can write"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(
            f"{where} cannot be created: {base} is not writable by this user; create the "
            f"directory (mode 0700) for it or change {key}"
        )


async def open_repository(
    cfg: Config, *, create: bool = False, as_of: datetime | None = None
) -> Any:
    """repoaccess.open_repository with the location checked first and OS errors phrased as
    the repository.path problem they are. `as_of`: an S3 repository read-only as it was
    then (`--as-of`)."""
    from protector.repoaccess import open_repository as open_repo

    check_repository_location(cfg, create=False)  # only `vigil init` creates
    try:
        return await open_repo(cfg, create=create, as_of=as_of)
    except OSError as exc:
        rc = cfg.repository
        raise UserError(
            f"{rc.key} {rc.location} (set in {cfg.path}): cannot "
            f"{'create or ' if create else ''}open the repository: {exc.strerror or exc}; make "
            f"it a directory this user can write, or change {rc.key}"
        ) from None


def parse_time(value: str) -> datetime:
    """An --as-of TIME: ISO 8601, "2026-12-06T14:30:00Z" or with an offset; without one it
    is UTC (S3 keeps version times in UTC)."""
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time; use ISO 8601 like 2026-12-06T14:30:00Z"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def as_of_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--as-of",
        metavar="TIME",
        type=parse_time,
        help="S3 repositories: read the bucket as it was at TIME (ISO 8601, UTC unless an "
        "offset is given), through the object versions it keeps, past delete markers an "
        "attacker stacked since (docs/object-storage.md, Recovery); nothing is written",
    )
