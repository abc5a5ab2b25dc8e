"""Matchers for the common simple patterns, built on `str` methods instead of RE2.

Most policy patterns are literals and `*` (`web-*`, `*-tmp`, `/DC0/vm/prod/**`,
`/**/team-3/**`) or plain-text regular expressions (`re:backup=yes`, `re:^db-`). For those a
`str` method call is about ten times cheaper than a trip through RE2's Python binding, which
matters when a full evaluation tries tens of thousands of values. They are linear too: the
literal pieces between stars are placed left to right, each at its first occurrence after the
previous one, which is optimal (any match can slide its pieces left to those places), so no
position is ever tried twice. Anything else (`?`, `[...]`, regex syntax) returns None and is
left to RE2; tests/policies/test_patterns.py checks these agree with the RE2 translation.
"""

from __future__ import annotations

from collections.abc import Callable

Matcher = Callable[[str], object]

_REGEX_META = frozenset("\\.^$*+?()[]{}|")


def star_glob(pattern: str) -> Matcher | None:
    """Whole-value match of a glob made of literals and `*` only (`*` spans anything)."""
    if "?" in pattern or "[" in pattern:
        return None
    if "*" not in pattern:
        return pattern.__eq__
    first, *middle, last = pattern.split("*")
    middle = [p for p in middle if p]
    least = len(first) + len(last) + sum(map(len, middle))
    if not middle:
        if not first and not last:
            return lambda _v: True
        return lambda v: len(v) >= least and v.startswith(first) and v.endswith(last)

    def match(v: str) -> bool:
        if len(v) < least or not v.startswith(first) or not v.endswith(last):
            return False
        pos, end = len(first), len(v) - len(last)
        for piece in middle:
            i = v.find(piece, pos, end)
            if i < 0:
                return False
            pos = i + len(piece)
        return True

    return match


def path_glob(pattern: str) -> Matcher | None:
    """A path glob (valid: "/"-rooted, no empty level) that is either levels of literals and
    `*` (`*` within its level), or literal levels and `**` levels (any number of non-empty
    levels, none included)."""
    if "?" in pattern or "[" in pattern:
        return None
    levels = pattern[1:].split("/")
    if "**" not in levels:
        each = [star_glob(seg) for seg in levels]

        def by_level(v: str) -> bool:
            parts = v.split("/")
            return (
                len(parts) == len(each) + 1
                and not parts[0]
                and all(m(x) for m, x in zip(each, parts[1:], strict=True))  # type: ignore[misc]
            )

        return by_level
    if any("*" in seg for seg in levels if seg != "**"):
        return None
    # A literal level is never empty and a `**` spans only non-empty levels, so a value
    # with an empty level ("//", a trailing "/") never matches. The literal runs between
    # the `**` levels, each as "/a/b/", can then be searched in value + "/": they only sit
    # on level boundaries there, and neighbours share the "/" between them.
    runs = "/".join(levels).split("**")
    first, *middle, last = ("/" + r.strip("/") + "/" if r.strip("/") else "/" for r in runs)
    middle = [p for p in middle if p != "/"]
    if not middle and last == "/":  # "/DC0/vm/prod/**": the folder and everything below
        top = first[:-1]
        if not top:
            return lambda v: v == "" or (v[:1] == "/" and "//" not in v and v[-1] != "/")
        return lambda v: v == top or (v.startswith(first) and "//" not in v and v[-1] != "/")

    def spans(v: str) -> bool:
        if "//" in v or v.endswith("/"):
            return False
        w = v + "/"
        if not w.startswith(first) or not w.endswith(last):
            return False
        pos, end = len(first) - 1, len(w) - len(last)
        for piece in middle:
            i = w.find(piece, pos, end + 1)
            if i < 0:
                return False
            pos = i + len(piece) - 1
        return pos <= end

    return spans


def literal_regex(expr: str) -> Matcher | None:
    """A regular expression that is plain text, anchored or not (`backup=yes`, `^db-`)."""
    head = expr.startswith("^")
    tail = expr.endswith("$") and not expr.endswith("\\$")
    body = expr[1 if head else 0 : len(expr) - 1 if tail else len(expr)]
    if not body or any(c in _REGEX_META for c in body) or not body.isprintable():
        return None
    if head and tail:
        return body.__eq__
    if head:
        return lambda v: v.startswith(body)
    if tail:
        return lambda v: v.endswith(body)
    return lambda v: body in v
