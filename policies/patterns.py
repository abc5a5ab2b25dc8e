"""Patterns → predicates that run in linear time, whatever the value.

The values patterns meet (VM names, notes, custom attributes, tags) are written by VM owners,
not by the admin who wrote the policy; a backtracking engine lets one of them freeze the
daemon's event loop: `re:^([a-z0-9]+-?)*$` needs seconds on a 27-character name (doubling
with each character), the glob `*owner=*team=*env=*` seconds on a 16 kB note (growing with
the cube of its length). So every pattern runs on RE2 (google-re2), whose automata take time
linear in the value: regular expressions are compiled by RE2 itself, and globs are translated
to RE2 syntax. What RE2 cannot run in linear time (backreferences, lookaround, atomic groups,
possessive repeats) is refused when the policy loads, with the reason.

Syntax: https://github.com/google/re2/wiki/Syntax. The differences from Python's `re` a
policy may meet are listed in docs/policies.md (the `$` before a final newline, ASCII-only
`\\d`/`\\w`/`\\s`); `\\Z` is accepted as Python spells it and read as RE2's `\\z`.

The common simple patterns (globs of literals and `*`, plain-text regular expressions) are
matched with `str` methods instead (fastmatch.py): linear too, and much cheaper per call.
"""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Callable
from functools import lru_cache

import re2

from .fastmatch import literal_regex, path_glob, star_glob

Matcher = Callable[[str], object]

REGEX_PREFIX = "re:"
_PUNCT = frozenset(string.punctuation)
# `\Z` (Python's end of text) not itself escaped: RE2 spells it `\z`.
_PY_END = re.compile(r"(?<!\\)((?:\\\\)*)\\Z")

# Why RE2 refuses what Python accepts: RE2's message → what to tell the admin.
_UNSUPPORTED = tuple(
    (re.compile(rx), hint)
    for rx, hint in (
        (r"invalid escape sequence: \\[1-9]", "backreferences are not supported"),
        (r"invalid perl operator: \(\?P$", "named backreferences are not supported"),
        (r"invalid perl operator: \(\?[=!]$", "lookahead is not supported"),
        (r"invalid perl operator: \(\?<[=!]$", "lookbehind is not supported"),
        (r"invalid perl operator: \(\?>$", "atomic groups are not supported"),
        (r"bad repetition operator: \S*\+$", "possessive repeats are not supported"),
        (r"invalid perl operator: \(\?#$", "comments are not supported"),
        (r"invalid perl operator: \(\?", "only the inline flags i, m, s and U are supported"),
    )
)


class PatternError(ValueError):
    """A pattern that cannot be compiled; the message says why, without the key path."""


def _options(*, dot_nl: bool = False) -> re2.Options:
    o = re2.Options()
    o.log_errors = False  # the reason goes into our error, not to stderr
    o.never_capture = True  # a yes/no answer needs no groups: RE2 can stay on its DFA
    o.dot_nl = dot_nl
    return o


def _re2(expr: str, *, dot_nl: bool = False) -> re2._Regexp:
    """Compile with RE2; raises re2.error (message as str)."""
    try:
        return re2.compile(expr, _options(dot_nl=dot_nl))
    except re2.error as exc:
        msg = exc.args[0] if exc.args else "cannot compile"
        raise re2.error(msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg) from None


def _encoded(search: Callable[[bytes], object]) -> Matcher:
    # RE2 works on UTF-8; a lone surrogate (possible in JSON from the vAPI) must not raise.
    return lambda value: search(value.encode("utf-8", "surrogatepass")) is not None


# --- globs ---------------------------------------------------------------------------------


def _escape(c: str) -> str:
    return "\\" + c if c in _PUNCT else c


def _translate_segment(seg: str, any_char: str, star: str) -> str:
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            while i + 1 < n and seg[i + 1] == "*":
                i += 1
            out.append(star)
        elif c == "?":
            out.append(any_char)
        elif c == "[":
            j = i + 1
            if j < n and seg[j] in "!^":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:
                raise PatternError(f'invalid glob "{seg}": unterminated [ at position {i}')
            body = seg[i + 1 : j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            # Every character of the set is literal except "-" between two (a range), as
            # in fnmatch: "[[:alpha:]]" is the set "[:alpha:" then "]", not a POSIX class.
            inner = "".join(ch if ch == "-" else _escape(ch) for ch in body)
            out.append(f"[{'^' if negate else ''}{inner}]")
            i = j
        else:
            out.append(_escape(c))
        i += 1
    return "".join(out)


def glob_to_regex(pattern: str, *, path: bool) -> str:
    """The RE2 expression (for a whole-value match) a glob stands for."""
    if not path:
        return _translate_segment(pattern, ".", ".*")
    if not pattern.startswith("/"):
        raise PatternError(f'invalid path glob "{pattern}": must start with "/"')
    parts: list[str] = []
    for seg in pattern[1:].split("/"):
        if seg == "":
            raise PatternError(f'invalid path glob "{pattern}": empty path level')
        if seg == "**":
            parts.append("(?:/[^/]+)*")
        elif "**" in seg:
            raise PatternError(f'invalid path glob "{pattern}": ** must be a whole path level')
        else:
            parts.append("/" + _translate_segment(seg, "[^/]", "[^/]*"))
    return "".join(parts)


def _compile_glob(pattern: str, *, path: bool) -> Matcher:
    expr = glob_to_regex(pattern, path=path)  # validates, also for the fast paths
    fast = path_glob(pattern) if path else star_glob(pattern)
    if fast is not None:
        return fast
    try:
        return _encoded(_re2(expr, dot_nl=True).fullmatch)
    except re2.error as exc:
        raise PatternError(f'invalid glob "{pattern}": {exc.args[0]}') from None


# --- regular expressions -------------------------------------------------------------------


def re2_syntax(expr: str) -> str:
    """The expression as RE2 reads it: Python's `\\Z` becomes `\\z`."""
    return _PY_END.sub(r"\1\\z", expr)


def _refusal(expr: str, reason: str) -> PatternError:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FutureWarning about nested sets
            re.compile(expr)
    except re.error as exc:  # invalid anywhere: Python's message says where
        return PatternError(f'invalid regular expression "{expr}": {exc}')
    hint = next((h for rx, h in _UNSUPPORTED if rx.match(reason)), None)
    why = f"{hint} ({reason})" if hint else reason
    return PatternError(
        f'unsupported regular expression "{expr}": {why}; patterns run on RE2, '
        "which guarantees linear-time matching (see docs/policies.md)"
    )


def _compile_regex(expr: str) -> Matcher:
    if not expr:
        raise PatternError("empty regular expression")
    try:
        rx = _re2(re2_syntax(expr))
    except re2.error as exc:
        raise _refusal(expr, exc.args[0]) from None
    return literal_regex(expr) or _encoded(rx.search)


@lru_cache(maxsize=16384)
def compile_pattern(pattern: str, *, path: bool = False) -> Matcher:
    """A predicate for one pattern; raises PatternError with a readable reason."""
    if pattern.startswith(REGEX_PREFIX):
        return _compile_regex(pattern[len(REGEX_PREFIX) :])
    if not pattern:
        raise PatternError("empty pattern")
    return _compile_glob(pattern, path=path)


def _any_of(matchers: tuple[Matcher, ...]) -> Matcher:
    if len(matchers) == 2:  # the common case, without a generator per value
        a, b = matchers
        return lambda v: a(v) or b(v)
    return lambda v: any(m(v) for m in matchers)


def _is_simple(pattern: str, *, path: bool) -> bool:
    """Whether the pattern's matcher is a fastmatch one (no RE2 call for ordinary values)."""
    if pattern.startswith(REGEX_PREFIX):
        return literal_regex(pattern[len(REGEX_PREFIX) :]) is not None
    return (path_glob(pattern) if path else star_glob(pattern)) is not None


@lru_cache(maxsize=4096)
def compile_alternatives(patterns: tuple[str, ...], *, path: bool) -> Matcher:
    """One predicate for a list of alternatives: the simple ones tried with `str` methods,
    the others combined into a single RE2 program (one C-level call per value)."""
    matchers = tuple(compile_pattern(p, path=path) for p in patterns)
    if len(patterns) == 1:
        return matchers[0]
    simple = [m for p, m in zip(patterns, matchers, strict=True) if _is_simple(p, path=path)]
    rest = [p for p in patterns if not _is_simple(p, path=path)]
    if len(rest) > 1:
        parts: list[str] = []
        for p in rest:
            if p.startswith(REGEX_PREFIX):
                # An inline flag inside the group stays scoped to this alternative in RE2.
                parts.append(f"(?:{re2_syntax(p[len(REGEX_PREFIX) :])})")
            else:
                parts.append(f"\\A(?s:{glob_to_regex(p, path=path)})\\z")
        try:
            simple.append(_encoded(_re2("|".join(parts)).search))
        except re2.error:  # e.g. the combined program exceeds RE2's memory budget
            simple.extend(m for p, m in zip(patterns, matchers, strict=True) if p in rest)
    elif rest:
        simple.append(matchers[patterns.index(rest[0])])
    return simple[0] if len(simple) == 1 else _any_of(tuple(simple))
