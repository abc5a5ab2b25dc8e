"""`vigil --help` and every command's --help: each option explained, examples where useful,
the same global options and --json wherever a command prints results."""

from __future__ import annotations

import argparse
import json

import pytest

from protector.cli.app import _subparsers, build_parser

from .clihelp import vigil, write_config

# Commands that run a process or a tour rather than print a result.
NO_RESULT = {"watch", "demo", "policy", "catalog", "files", "mount", "key"}


def all_commands() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for p in _subparsers(build_parser()):
        found[p.prog.removeprefix("vigil ")] = p
    return found


COMMANDS = all_commands()


def test_every_command_is_listed():
    assert set(COMMANDS) >= {
        "inventory",
        "policy",
        "policy check",
        "policy diff",
        "backup",
        "list",
        "restore",
        "export",
        "verify",
        "prune",
        "catalog",
        "catalog rebuild",
        "watch",
        "status",
        "demo",
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_and_argument_is_explained(name):
    parser = COMMANDS[name]
    assert parser.description, f"`vigil {name} --help` has no description"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (
            f"vigil {name}: {action.option_strings or action.dest} has no help"
        )


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - NO_RESULT))
def test_every_command_that_prints_results_takes_json(name):
    opts = {s for a in COMMANDS[name]._actions for s in a.option_strings}
    assert "--json" in opts, f"vigil {name} prints results but has no --json"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_global_options_are_accepted_after_the_command(name):
    opts = {s for a in COMMANDS[name]._actions for s in a.option_strings}
    assert {"--config", "--log-level", "--log-json"} <= opts


@pytest.mark.parametrize(
    "name", ["inventory", "backup", "list", "restore", "export", "verify", "policy check"]
)
def test_main_commands_show_examples(name):
    r = vigil(*name.split(), "--help", password=None)
    assert r.returncode == 0
    assert "Examples:" in r.stdout or "Example:" in r.stdout
    assert f"vigil {name.split()[0]}" in r.stdout.split("Example", 1)[1]


def test_top_level_help_has_first_steps_and_exit_codes():
    r = vigil("--help", password=None)
    assert r.returncode == 0
    for cmd in ("inventory", "policy", "backup", "list", "restore", "watch", "status", "demo"):
        assert f"    {cmd}" in r.stdout, cmd
    assert "Exit codes: 0 ok; 1" in r.stdout and "2 it could not run" in r.stdout
    assert "vigil policy check" in r.stdout and "LEVEL" in r.stdout


def test_config_after_the_command_works(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url)
    r = vigil("inventory", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 4


def test_config_before_the_command_is_not_reset_by_the_subcommand(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url)
    r = vigil("policy", "check", "--json", cfg=cfg)  # --config given before `policy`
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policies"][0]["name"] == "all"


def test_bad_log_level_is_a_usage_error():
    r = vigil("--log-level", "loud", "list", password=None)
    assert r.returncode == 2
    assert "invalid choice: 'loud'" in r.stderr and "Traceback" not in r.stderr
