"""Errors raised while loading policies: each one names the file, line, policy and key at fault."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyError:
    """One problem in one policy file.

    `line` is known for TOML syntax errors (tomllib reports it) and, best effort, for keys we
    could locate in the source; `policy` is the policy's name (or `#N` when it has none).
    """

    file: str
    message: str
    line: int | None = None
    policy: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        parts = [self.file if self.line is None else f"{self.file}:{self.line}"]
        if self.policy is not None:
            parts.append(self.policy if self.policy.startswith("#") else f'policy "{self.policy}"')
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)


class PolicyLoadError(Exception):
    """A policy set did not load; `errors` holds every problem found, not only the first."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in policies:"
        return "\n".join([head, *(f"  {e}" for e in self.errors)])
