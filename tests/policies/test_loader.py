"""Loading policy files: what a valid file means, and precise errors for every mistake."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest
from policy_helpers import policy_toml

from policies import PolicyLoadError, load_policies, parse_duration, parse_window
from policies.model import Window

ROOT = Path(__file__).resolve().parents[2]


def errors_of(path: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load_policies(path)
    return [str(e) for e in info.value.errors]


FULL = """\
[[policy]]
name = "prod-gold"
priority = 10
enabled = true

[policy.select]
folders = ["/DC0/vm/prod/**"]
names = ["web-*", "re:^db-[0-9]+$"]
tags = ["Backup:Gold"]
resource_pools = ["/DC0/host/C0/Resources/**"]
datacenters = ["DC0"]
power_states = ["poweredOn", "poweredOff"]
guest_ids = ["rhel*"]
attributes = { Owner = "team-*" }
annotation = ["re:backup=yes"]
templates = false

[policy.exclude]
names = ["*-tmp"]
tags = ["Backup:Never"]

[policy.schedule]
rpo = "24h"
window = "20:00-06:00"

[policy.trigger]
on_match = "immediate"
outside_window = true
on_power_off = false

[policy.retention]
keep_last = 3
daily = 7
weekly = 4
monthly = 12
yearly = 0

[policy.backup]
quiesce = true
on_quiesce_failure = "crash-consistent"
enable_cbt = true
exclude_disks = ["scsi0:1"]
transport = ["vddk", "http"]
"""


def test_the_documented_example_loads_with_every_key(write) -> None:
    ps = load_policies(write("prod.toml", FULL))
    (p,) = ps.policies
    assert p.name == "prod-gold" and p.priority == 10 and p.enabled
    assert p.select.folders == ("/DC0/vm/prod/**",)
    assert p.select.names == ("web-*", "re:^db-[0-9]+$")
    assert p.select.attributes == (("Owner", ("team-*",)),)
    assert p.select.power_states == ("poweredOn", "poweredOff")
    assert p.select.templates is False
    assert p.exclude.names == ("*-tmp",) and p.exclude.tags == ("Backup:Never",)
    assert p.schedule.rpo == timedelta(hours=24)
    assert p.schedule.window == Window(time(20, 0), time(6, 0))
    assert p.schedule.window.crosses_midnight
    assert p.trigger.on_match == "immediate" and p.trigger.outside_window
    assert (p.retention.keep_last, p.retention.daily, p.retention.monthly) == (3, 7, 12)
    assert p.backup.exclude_disks == ("scsi0:1",) and p.backup.transport == ("vddk", "http")
    assert p.backup.on_quiesce_failure == "crash-consistent" and p.backup.quiesce_fallback
    assert p.source.endswith("prod.toml")


def test_the_shipped_examples_load_cleanly() -> None:
    ps = load_policies(ROOT / "policies.example")
    assert len(ps) >= 3


def test_bad_regex_names_file_line_policy_and_key(write) -> None:
    text = FULL.replace('"re:^db-[0-9]+$"', '"re:^db-("')
    path = write("policies.d/prod.toml", text)
    assert errors_of(path.parent) == [
        f'{path.parent}/prod.toml:8: policy "prod-gold": select.names[1]: invalid regular '
        'expression "^db-(": missing ), unterminated subpattern at position 4'
    ]


def test_bad_duration_and_window_are_reported_together(write) -> None:
    text = FULL.replace('rpo = "24h"', 'rpo = "1w"').replace("20:00-06:00", "20:00-6:00")
    path = write("prod.toml", text)
    assert errors_of(path) == [
        f'{path}:23: policy "prod-gold": schedule.rpo: invalid duration "1w": expected a whole '
        'number and a unit s, m, h or d, like "90s", "15m", "24h" or "7d"',
        f'{path}:24: policy "prod-gold": schedule.window: invalid window "20:00-6:00": '
        'expected "HH:MM-HH:MM", like "20:00-06:00"',
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "0h", "1.5h", "-1h", "24", "h", "1H", "24 h"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_windows_may_cross_midnight() -> None:
    assert not parse_window("08:00-17:30").crosses_midnight
    assert parse_window("22:00-02:00").crosses_midnight
    assert parse_window("06:00-00:00").crosses_midnight  # ends at midnight


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("24:00-06:00", "hours are 00-23"),
        ("20:60-06:00", "hours are 00-23"),
        ("20:00-20:00", "start and end are equal"),
        ("20:00", "expected"),
    ],
)
def test_bad_windows(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_window(bad)


def test_unknown_keys_everywhere_are_errors(write) -> None:
    text = (
        FULL.replace("enabled = true", "enabeld = true")
        .replace('tags = ["Backup:Never"]', 'tag = ["Backup:Never"]')
        .replace("daily = 7", "dayly = 7")
        .replace("[policy.backup]", "[policy.backups]")
    )
    path = write("prod.toml", text)
    errs = errors_of(path)
    assert errs == [
        f'{path}:4: policy "prod-gold": enabeld: unknown key (allowed: name, priority, '
        "enabled, select, exclude, schedule, trigger, retention, backup, vcenters, copy_to, "
        "copy_retention)",
        f'{path}:38: policy "prod-gold": backups: unknown key (allowed: name, priority, '
        "enabled, select, exclude, schedule, trigger, retention, backup, vcenters, copy_to, "
        "copy_retention)",
        f'{path}:20: policy "prod-gold": exclude.tag: unknown key (allowed: folders, names, '
        "tags, resource_pools, datacenters, power_states, guest_ids, annotation, vapps, "
        "attributes, templates)",
        f'{path}:33: policy "prod-gold": retention.dayly: unknown key (allowed: keep_last, '
        "daily, weekly, monthly, yearly)",
    ]


def test_unknown_top_level_key(write) -> None:
    path = write("a.toml", "[policies]\nname = 'x'\n" + policy_toml())
    assert errors_of(path) == [
        f"{path}: policies: unknown key (a policy file holds [[policy]] tables)"
    ]


def test_toml_syntax_error_gives_the_line(write) -> None:
    path = write("a.toml", policy_toml() + "keep_last = = 3\n")
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:13: invalid TOML: Invalid value")


def test_duplicate_names_across_files(write) -> None:
    write("d/a.toml", policy_toml("gold", 10))
    path = write("d/b.toml", policy_toml("gold", 20))
    assert errors_of(path.parent) == [
        f'{path}: policy "gold": name: duplicate policy name, first defined in {path.parent}/a.toml'
    ]


def test_directory_loads_toml_files_in_name_order(write) -> None:
    write("d/b.toml", policy_toml("second", 2))
    write("d/a.toml", policy_toml("first", 1))
    write("d/notes.txt", "not a policy")
    ps = load_policies(write("d/c.toml", policy_toml("third", 3)).parent)
    assert [p.source.rsplit("/", 1)[1] for p in ps] == ["a.toml", "b.toml", "c.toml"]


def test_empty_selection_and_empty_lists(write) -> None:
    path = write(
        "a.toml",
        policy_toml("none", select="templates = true")
        + policy_toml("empty", select="names = []").replace("[[policy]]", "\n[[policy]]"),
    )
    errs = errors_of(path)
    assert errs == [
        f'{path}:5: policy "none": select: no selection criterion: a policy must select '
        'something (folders = ["/**"] selects every VM)',
        f'{path}:19: policy "empty": select.names: empty list: it would match nothing',
    ]


def test_bad_globs_and_values(write) -> None:
    select = (
        'folders = ["DC0/vm", "/DC0//vm", "/DC0/vm**"]\nnames = ["web-[0-9"]\n'
        'tags = ["Gold"]\npower_states = ["on"]\nattributes = { Owner = 3 }'
    )
    path = write("a.toml", policy_toml("p", select=select))
    keys = [e.split(": ")[2] + ": " + e.split(": ", 3)[3] for e in errors_of(path)]
    assert keys == [
        'select.folders[0]: invalid path glob "DC0/vm": must start with "/"',
        'select.folders[1]: invalid path glob "/DC0//vm": empty path level',
        'select.folders[2]: invalid path glob "/DC0/vm**": ** must be a whole path level',
        'select.names[0]: invalid glob "web-[0-9": unterminated [ at position 4',
        'select.tags[0]: tag "Gold" must be written "Category:Tag"',
        'select.power_states[0]: unknown power state "on" (expected one of poweredOn, '
        "poweredOff, suspended)",
        "select.attributes.Owner: expected a string or a list of strings, got int 3",
    ]


def test_missing_and_mistyped_values(write) -> None:
    text = """\
        [[policy]]
        name = "bad name!"
        priority = "high"
        enabled = "yes"
        [policy.select]
        names = ["*"]
        [policy.trigger]
        on_match = "now"
        [policy.retention]
        keep_last = -1
        [policy.backup]
        exclude_disks = ["disk1"]
        transport = ["nbd"]
        """
    path = write("a.toml", text)
    assert [e.split(": ", 2)[2] for e in errors_of(path)] == [
        "name: invalid name \"bad name!\": use letters, digits, '.', '_' and '-', starting "
        "with a letter or digit",
        'priority: expected a whole number, got "high"',
        'enabled: expected true or false, got "yes"',
        "schedule: missing required table [policy.schedule]",
        'trigger.on_match: expected "immediate" or "schedule", got "now"',
        "retention.keep_last: must not be negative, got -1",
        'backup.exclude_disks[0]: expected "controller:unit" like "scsi0:1", got "disk1"',
        'backup.transport[0]: unknown transport "nbd" (expected one of vddk, http, file)',
    ]
    assert errors_of(path)[0].startswith(f"{path}:2: #1: name: ")


def test_retention_needs_a_rule(write) -> None:
    path = write("a.toml", policy_toml().replace("keep_last = 3", "daily = 0"))
    assert errors_of(path) == [
        f'{path}:11: policy "p": retention: no keep rule above zero (set one of keep_last, '
        "daily, weekly, monthly, yearly)"
    ]


def test_nothing_to_load(tmp_path: Path, write) -> None:
    assert errors_of(tmp_path / "missing") == [f"{tmp_path}/missing: no such file or directory"]
    (tmp_path / "empty").mkdir()
    assert errors_of(tmp_path / "empty") == [
        f"{tmp_path}/empty: no policy files (*.toml) in this directory"
    ]
    assert errors_of(write("blank.toml", "# nothing yet\n")) == [
        f"{tmp_path}/blank.toml: no policies defined (add a [[policy]] table)"
    ]


def test_load_error_str_lists_every_error(write) -> None:
    path = write("a.toml", policy_toml(select='names = ["re:("]', extra="[policy.x]\n"))
    with pytest.raises(PolicyLoadError) as info:
        load_policies(path)
    text = str(info.value)
    assert text.splitlines()[0] == "2 errors in policies:"
    assert 'select.names[0]: invalid regular expression "("' in text
    assert "x: unknown key" in text


def test_on_quiesce_failure(write) -> None:
    def backup_of(line: str) -> object:
        text = FULL.replace('on_quiesce_failure = "crash-consistent"', line)
        return load_policies(write("p.toml", text)).policies[0].backup

    fail = backup_of('on_quiesce_failure = "fail"')
    assert fail.on_quiesce_failure == "fail" and not fail.quiesce_fallback  # type: ignore[attr-defined]
    old = backup_of("quiesce_fallback = false")  # the older spelling still means the same
    assert old.on_quiesce_failure == "fail"  # type: ignore[attr-defined]
    assert backup_of("").on_quiesce_failure == "crash-consistent"  # type: ignore[attr-defined]

    path = write("bad.toml", FULL.replace('"crash-consistent"', '"crash"'))
    (err,) = errors_of(path)
    assert (
        "backup.on_quiesce_failure: expected one of 'crash-consistent', 'fail', got \"crash\""
        in err
    )
    both = FULL.replace(
        'on_quiesce_failure = "crash-consistent"',
        'on_quiesce_failure = "fail"\nquiesce_fallback = true',
    )
    (err,) = errors_of(write("both.toml", both))
    assert "backup.quiesce_fallback: set either on_quiesce_failure" in err


def test_vapps_selector_is_a_path_glob(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(policy_toml(select='vapps = ["/DC0/host/*/Resources/shop/**"]'))
    [p] = load_policies(f)
    assert p.select.vapps == ("/DC0/host/*/Resources/shop/**",)
    f.write_text(policy_toml(select="vapps = []"))
    with pytest.raises(PolicyLoadError) as e:
        load_policies(f)
    assert f"{f}:" in str(e.value) and "select.vapps" in str(e.value)
