"""Protection policies: the model, strict TOML loading, linear-time matching, overlaps and
holds through conflicting edits, retention, schedules, hot reload and the dry-run diff.
Pure logic; the only I/O is reading policy files. See docs/policies.md."""

from .cli import (
    check_exit_code,
    check_report,
    diff_report,
    render_check,
    render_diff,
    report_errors,
)
from .engine import (
    CompiledSet,
    DiffEntry,
    Evaluation,
    PolicyDiff,
    VmResult,
    compile_set,
    diff,
    evaluate,
    evaluate_one,
)
from .errors import PolicyError, PolicyLoadError
from .holds import keep_through_conflicts
from .loader import load_policies, parse_duration, parse_window
from .model import (
    BackupOptions,
    Policy,
    PolicySet,
    Retention,
    Schedule,
    Selector,
    Trigger,
    VmFacts,
    Window,
)
from .reload import PolicyStore, ReloadOutcome
from .retention import RetentionDecision, RetentionPoint, RetentionResult, plan_retention
from .schedule import NextRun, in_window, local_zone, next_run

__all__ = [
    "BackupOptions",
    "CompiledSet",
    "DiffEntry",
    "Evaluation",
    "NextRun",
    "Policy",
    "PolicyDiff",
    "PolicyError",
    "PolicyLoadError",
    "PolicySet",
    "PolicyStore",
    "ReloadOutcome",
    "Retention",
    "RetentionDecision",
    "RetentionPoint",
    "RetentionResult",
    "Schedule",
    "Selector",
    "Trigger",
    "VmFacts",
    "VmResult",
    "Window",
    "check_exit_code",
    "check_report",
    "compile_set",
    "diff",
    "diff_report",
    "evaluate",
    "evaluate_one",
    "in_window",
    "keep_through_conflicts",
    "load_policies",
    "local_zone",
    "next_run",
    "parse_duration",
    "parse_window",
    "plan_retention",
    "render_check",
    "render_diff",
    "report_errors",
]
