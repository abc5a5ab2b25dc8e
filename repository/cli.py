"""Entry points behind `vigil verify|prune|export|catalog rebuild`: each returns an
outcome (exit code, printable lines, data) and prints nothing itself."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from repository.backend import LocalBackend
from repository.errors import CorruptChunkError, RepositoryError
from repository.prune import RuleFor, prune
from repository.repo import Repository
from repository.verify import scrub, verify

PASSPHRASE_ENV = "VIGIL_PASSPHRASE"


@dataclass(slots=True)
class Outcome:
    exit_code: int
    lines: list[str] = field(default_factory=list)
    data: Any = None


def read_passphrase(env_var: str = PASSPHRASE_ENV, file: Path | str | None = None) -> str | None:
    """The passphrase from a file (first line) if given, else from the environment."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise RepositoryError(f"cannot read passphrase file {file}: {exc}") from exc
        line = text.splitlines()[0] if text else ""
        if not line:
            raise RepositoryError(f"passphrase file {file} is empty")
        return line
    return os.environ.get(env_var) or None


def verify_cmd(
    repo_path: Path | str,
    passphrase: str | None,
    point: str | None = None,
    read_data: bool = False,
    subset_pct: float = 100.0,
    known_heads: dict[str, int] | None = None,
) -> Outcome:
    repo = Repository.open(repo_path, passphrase)
    report = verify(
        repo,
        [point] if point else None,
        read_data=read_data,
        subset_pct=subset_pct,
        known_heads=known_heads,
    )
    return Outcome(report.exit_code, report.lines(), report)


def prune_cmd(
    repo_path: Path | str,
    passphrase: str | None,
    rule_for: RuleFor,
    dry_run: bool = False,
    orphan_keep_days: float = 30,
    grace: timedelta = timedelta(hours=1),
) -> Outcome:
    repo = Repository.open(repo_path, passphrase)
    result = prune(repo, rule_for, dry_run=dry_run, orphan_keep_days=orphan_keep_days, grace=grace)
    # A limited sweep means unreadable manifests: damage, which exit code 1 reports.
    return Outcome(1 if result.sweep_limited else 0, result.lines(), result)


def export_cmd(
    repo_path: Path | str, passphrase: str | None, point: str, disk: str, dest: Path | str
) -> Outcome:
    repo = Repository.open(repo_path, passphrase)
    try:
        written = repo.export_raw(point, disk, dest)
    except CorruptChunkError as exc:
        return Outcome(1, [f"export failed, {dest} removed: {exc}"], exc)
    return Outcome(0, [f"exported {point}/{disk} to {dest} ({written} data bytes)"], written)


async def catalog_rebuild_cmd(repo_path: Path | str, passphrase: str | None) -> Outcome:
    repo = Repository.open(repo_path, passphrase)
    live, pruned = await repo.state.rebuild(repo)
    return Outcome(0, [f"catalog rebuilt: {live} restore points, {pruned} pruned"], (live, pruned))


def scrub_cmd(repo_path: Path | str) -> Outcome:
    """CRC check of every object without the passphrase (bit rot on any repository)."""
    bad = scrub(LocalBackend(repo_path))
    lines = [f"BAD {b.key}: {b.reason}" for b in bad] + ["OK" if not bad else "DAMAGED"]
    return Outcome(1 if bad else 0, lines, bad)
