"""What every section of `vigil.toml` shares: the error type whose lines name the file, the
line and the key; the TOML line locator; reading secret files; refusing files another user
could have planted; `HH:MM` parsing. `protector.config` re-exports all of it."""

from __future__ import annotations

import difflib
import os
import re
import stat
from pathlib import Path


class ConfigError(Exception):
    """The configuration is invalid; one line per problem, each naming the file, the line
    (when known) and the key."""

    def __init__(
        self, path: str, problems: list[str], lines: list[int | None] | None = None
    ) -> None:
        self.path = path
        self.problems = problems
        self.lines = lines or [None] * len(problems)
        super().__init__(
            "\n".join(
                f"{path}:{ln}: {p}" if ln else f"{path}: {p}"
                for p, ln in zip(problems, self.lines, strict=True)
            )
        )


class KeyLines:
    """Best-effort line numbers of keys and tables in a TOML source (tomllib gives lines only
    for syntax errors), so an error points at the line to edit."""

    _header = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\- \"]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*([A-Za-z0-9_\-\"]+(?:\s*\.\s*[A-Za-z0-9_\-\"]+)*)\s*=")

    def __init__(self, text: str) -> None:
        self.where: dict[str, int] = {}
        table = ""
        for n, line in enumerate(text.splitlines(), 1):
            if m := self._header.match(line):
                table = self._norm(m.group(1))
                self.where.setdefault(table, n)
            elif m := self._key.match(line):
                key = self._norm(m.group(1))
                self.where.setdefault(f"{table}.{key}" if table else key, n)

    @staticmethod
    def _norm(dotted: str) -> str:
        return ".".join(part.strip().strip('"') for part in dotted.split("."))

    def line(self, keypath: str) -> int | None:
        """The line of `keypath`, else of the nearest enclosing table that is written."""
        parts = keypath.strip("[]").split(".")
        while parts:
            found = self.where.get(".".join(parts))
            if found:
                return found
            parts.pop()
        return None

    def locate(self, problems: list[str]) -> list[int | None]:
        """Problems start with the key path they are about ("limits.per_host: ...")."""
        return [self.line(p.split(":", 1)[0].split(" ", 1)[0]) for p in problems]


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def private_dir_owners(st: os.stat_result) -> set[int] | None:
    """Who may own a secret (a key file, a socket) in the directory `st` describes: root,
    us and the directory's owner (the service's user); None when group or others may write
    the directory, so that anyone could have put the secret there."""
    if st.st_mode & 0o022:
        return None
    return {0, os.geteuid(), st.st_uid}


def read_secret_file(path: str, key: str, config_path: str) -> str:
    """A password or passphrase from its file, refused (as ssh refuses a private key) when
    group or others may read it: the secret would already be out of our hands."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise ConfigError(
                    config_path,
                    [
                        f"{key}: {path} is readable by others (mode {mode & 0o777:04o}); "
                        f"run `chmod 600 {path}` (and consider changing the secret)"
                    ],
                )
            return f.read().decode().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(
            config_path,
            [
                f"{key}: cannot read {path}: {exc.strerror or exc}; create it (mode 0600) "
                "holding the secret"
            ],
        ) from None


def parse_hhmm(value: str) -> tuple[int, int] | None:
    """(hour, minute) of a 24-hour "HH:MM", or None when it is not one."""
    hh, sep, mm = value.partition(":")
    if not sep or not (hh.isdigit() and mm.isdigit()) or len(hh) > 2 or len(mm) != 2:
        return None
    h, m = int(hh), int(mm)
    return (h, m) if h < 24 and m < 60 else None


def ownership_problem(path: Path) -> str | None:
    """Why `path` cannot be trusted as configuration, or None. A file another user owns or
    can write (or one in a directory another user can rewrite) could have been planted: the
    classic case is root running `vigil` in someone's directory and reading their
    ./vigil.toml, sending the vCenter password to a host of their choosing and loading
    their `vddk_libdir` as a library. ssh refuses its config files on the same grounds."""
    me = os.geteuid()
    for target, kind in ((path, "file"), (path.parent, "directory")):
        st = target.stat()
        where = str(target.absolute())
        if st.st_uid not in (0, me):
            return (
                f"refused: the {kind} {where} is owned by uid {st.st_uid}, not by root or the "
                f"user running vigil (uid {me}), so another user could have planted or changed "
                f"it; if it is yours, run `chown {me} {where}`, else use a configuration "
                "of your own (--config PATH)"
            )
        sticky = kind == "directory" and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
            return (
                f"refused: the {kind} {where} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), so another user could change it; run "
                f"`chmod go-w {where}`"
            )
    return None
