"""Best-effort line numbers for keys of a policy file (tomllib reports lines only for
syntax errors), so a validation error can name the line it is about."""

from __future__ import annotations

import re


class Locator:
    """Best-effort line numbers for keys (tomllib reports lines only for syntax errors)."""

    _policy = re.compile(r"\s*\[\[\s*policy\s*\]\]")
    _section = re.compile(r"\s*\[\s*policy\s*\.\s*([A-Za-z0-9_-]+)\s*\]")
    _header = re.compile(r"\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.starts = [i for i, ln in enumerate(self.lines) if self._policy.match(ln)]

    def _find_key(self, key: str, lo: int, hi: int) -> int | None:
        pat = re.compile(rf"\s*\"?{re.escape(key)}\"?\s*=")
        for i in range(lo, hi):
            if self._header.match(self.lines[i]) and i != lo:
                if self._policy.match(self.lines[i]) or self._section.match(self.lines[i]):
                    return None
            if pat.match(self.lines[i]):
                return i + 1
        return None

    def line(self, index: int, keypath: str) -> int | None:
        if index >= len(self.starts):
            return None
        lo = self.starts[index]
        hi = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.lines)
        parts = re.split(r"[.\[]", keypath, maxsplit=2)
        table = parts[0]
        if not table:
            return lo + 1
        for i in range(lo + 1, hi):
            m = self._section.match(self.lines[i])
            if m and m.group(1) == table:
                if len(parts) < 2 or not parts[1] or parts[1][0].isdigit():
                    return i + 1
                return self._find_key(parts[1], i + 1, hi) or i + 1
        return self._find_key(table, lo + 1, hi)
