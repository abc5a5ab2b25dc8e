"""Load policy files: one TOML file or a directory of `*.toml` (read in name order).

Validation is strict because a typo must never silently change what gets protected: unknown
keys, empty selections, bad patterns, durations and windows are errors, and every error of a
load is collected and reported together, each naming file, line (when known), policy and key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Collection
from pathlib import Path

from .document import parse_document, parse_duration, parse_window
from .errors import PolicyError, PolicyLoadError
from .model import Policy, PolicySet

TOML_LINE_RE = re.compile(r"\(at line (\d+), column \d+\)")


def policy_files(path: str | os.PathLike[str]) -> list[str]:
    """The files a policy path stands for: itself, or the `*.toml` in it, sorted by name."""
    p = Path(path)
    if p.is_dir():
        return [os.path.join(str(path), f.name) for f in sorted(p.glob("*.toml")) if f.is_file()]
    return [str(path)]


def load_policies(
    path: str | os.PathLike[str],
    *,
    read: Callable[[str], bytes] | None = None,
    vcenters: Collection[str] | None = None,
) -> PolicySet:
    """Load and validate a policy file or directory; raise PolicyLoadError with every error.
    `vcenters`: the configured vCenter names a policy's `vcenters` may use (None: unchecked)."""
    read = read or (lambda f: Path(f).read_bytes())
    errors: list[PolicyError] = []
    policies: list[Policy] = []
    if not os.path.exists(path):
        raise PolicyLoadError([PolicyError(str(path), "no such file or directory")])
    files = policy_files(path)
    if not files:
        raise PolicyLoadError(
            [PolicyError(str(path), "no policy files (*.toml) in this directory")]
        )
    for file in files:
        try:
            text = read(file).decode("utf-8")
        except OSError as exc:
            errors.append(PolicyError(file, f"cannot read: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError as exc:
            errors.append(PolicyError(file, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
            continue
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = TOML_LINE_RE.search(msg)
            line = int(m.group(1)) if m else None
            msg = TOML_LINE_RE.sub("", msg).strip()
            errors.append(PolicyError(file, f"invalid TOML: {msg}", line))
            continue
        ps, errs = parse_document(doc, file, text, vcenters=vcenters)
        policies.extend(ps)
        errors.extend(errs)

    seen: dict[str, Policy] = {}
    for p in policies:
        first = seen.get(p.name)
        if first is None:
            seen[p.name] = p
            continue
        errors.append(
            PolicyError(
                p.source,
                f"duplicate policy name, first defined in {first.source}",
                None,
                p.name,
                "name",
            )
        )
    if not policies and not errors:
        errors.append(PolicyError(str(path), "no policies defined (add a [[policy]] table)"))
    if errors:
        raise PolicyLoadError(errors)
    return PolicySet(tuple(policies), str(path))


# parse_duration/parse_window/parse_document live in `document`; kept importable from here.
__all__ = ["load_policies", "parse_document", "parse_duration", "parse_window", "policy_files"]
