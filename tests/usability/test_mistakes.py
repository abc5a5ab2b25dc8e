"""The mistakes every admin makes once: each must end in ONE line naming the config key, file
or object at fault and what to do next, with exit code 2 (the command could not run), and
never a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .clihelp import PASSWORD_ENV, one_error_line, vigil, write_config


def test_wrong_password_names_user_url_and_password_source(tmp_path, vcsim):
    r = vigil("inventory", cfg=write_config(tmp_path, vcsim.url), password="wrong")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"login failed for user at {vcsim.url}" in line
    assert "vcenter.user" in line and PASSWORD_ENV in line
    assert "wrong" not in line.replace("wrong password", "")


def test_password_env_unset_names_file_key_and_variable(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url)
    r = vigil("inventory", cfg=cfg, password=None)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert str(cfg) in line
    assert "vcenter.password_env" in line and f"{PASSWORD_ENV} is not set" in line
    assert f"export {PASSWORD_ENV}=" in line or "password_file" in line


def test_password_env_unset_json_is_one_error_object(tmp_path, vcsim):
    r = vigil("inventory", "--json", cfg=write_config(tmp_path, vcsim.url), password=None)
    assert r.returncode == 2
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "config" and "\n" not in err["message"]
    assert "vcenter.password_env" in err["message"]


def test_unreachable_vcenter_says_check_vcenter_url(tmp_path):
    cfg = write_config(tmp_path, "http://127.0.0.1:9/sdk")
    start = time.monotonic()
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2 and time.monotonic() - start < 15
    line = one_error_line(r.stderr)
    assert "cannot reach vCenter at http://127.0.0.1:9/sdk" in line
    assert "vcenter.url" in line and str(cfg) in line


def test_self_signed_certificate_suggests_ca_file_or_pin_with_the_real_thumbprint(
    tmp_path, make_vcsim
):
    sim = make_vcsim(tls=True)
    r = vigil("inventory", cfg=write_config(tmp_path, sim.url))
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "certificate" in line and "vcenter.ca_file" in line
    assert "vcenter.thumbprint" in line
    assert sim.thumbprint and sim.thumbprint in line, "the admin can pin what it shows"
    # and pinning exactly what it suggested works
    pinned = write_config(tmp_path, sim.url, vcenter_extra=f'thumbprint = "{sim.thumbprint}"\n')
    ok = vigil("inventory", "--json", cfg=pinned)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == 4


def test_wrong_thumbprint_shows_expected_and_actual(tmp_path, make_vcsim):
    sim = make_vcsim(tls=True)
    wrong = ":".join(["AB"] * 32)
    cfg = write_config(tmp_path, sim.url, vcenter_extra=f'thumbprint = "{wrong}"\n')
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert wrong in line and sim.thumbprint in line and "vcenter.thumbprint" in line


def test_sha1_thumbprint_is_explained(tmp_path, vcsim):
    sha1 = ":".join(["AB"] * 20)  # what the vSphere Client shows by default
    cfg = write_config(tmp_path, vcsim.url, vcenter_extra=f'thumbprint = "{sha1}"\n')
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "vcenter.thumbprint" in line and "SHA-1" in line and "SHA-256" in line
    assert f"{cfg}:5:" in line, "the line of the key"


def test_missing_config_file_names_the_absolute_path_and_the_example(tmp_path):
    r = vigil("inventory", cwd=tmp_path)  # default ./vigil.toml
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert str(tmp_path / "vigil.toml") in line
    assert "--config" in line and "VIGIL_CONFIG" in line and "config.example.toml" in line


def test_config_unknown_key_names_key_and_line(tmp_path, vcsim):
    extra = "[limits]\nconcurrent_backups = 2\nper_hots = 2\n"
    cfg = write_config(tmp_path, vcsim.url, extra=extra)
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert line.startswith(f"vigil: {cfg}:13: limits.per_hots: unknown key")
    assert "per_host" in line, "the close match is suggested"


def test_config_wrong_type_names_key_and_line(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, extra='[limits]\nper_host = "2"\n')
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert line.startswith(f"vigil: {cfg}:12: limits.per_host: must be an integer, got '2'")


def test_config_several_problems_one_line_each(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, extra="[limits]\nper_hots = 2\nio_threads = 0\n")
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"vigil: {cfg}:12: limits.per_hots: unknown key (known: concurrent_backups, "
        "io_threads, per_datastore, per_host); did you mean per_host?",
        f"vigil: {cfg}:13: limits.io_threads: must be at least 1, got 0",
    ]


def test_config_toml_syntax_error_names_the_line(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, extra="[limits\n")
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert line.startswith(f"vigil: {cfg}:11: not valid TOML")


def test_ca_file_missing_names_the_key(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, vcenter_extra='ca_file = "vc-ca.pem"\n')
    r = vigil("inventory", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"{cfg}:5: vcenter.ca_file" in line and str(tmp_path / "vc-ca.pem") in line


def _unwritable(tmp_path: Path) -> str:
    """A repository path that cannot be created, even as root: its parent is a file."""
    (tmp_path / "not-a-dir").write_text("")
    return "not-a-dir/repo"


def test_repository_path_not_writable_names_repository_path(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, repo=_unwritable(tmp_path), init=False)
    r = vigil("init", "--encryption", "none", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "repository.path" in line and str(tmp_path / "not-a-dir" / "repo") in line


def test_repository_under_a_missing_mount_names_repository_path(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, repo="/proc/vigil-no-such/repo", init=False)
    r = vigil("init", "--encryption", "none", cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "repository.path" in line and "/proc/vigil-no-such/repo" in line


def test_no_repository_yet_names_repository_path(tmp_path, vcsim):
    r = vigil("list", cfg=write_config(tmp_path, vcsim.url, init=False))
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "repository.path" in line and "create it with `vigil init`" in line


@pytest.mark.parametrize("command", [["policy", "check"], ["prune", "--dry-run"]])
def test_policies_path_missing_names_policies_path(tmp_path, vcsim, command):
    cfg = write_config(tmp_path, vcsim.url, policies="policies.d", with_policies=False)
    r = vigil(*command, cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "policies.path" in line and str(tmp_path / "policies.d") in line
    assert "policies.example" in line


def test_vm_not_found_suggests_close_matches(tmp_path, vcsim):
    r = vigil("backup", "DC0_H0_VM", cfg=write_config(tmp_path, vcsim.url))
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "no VM with name 'DC0_H0_VM'" in line
    assert "DC0_H0_VM0" in line and "DC0_H0_VM1" in line
    assert "vigil inventory" in line


def test_vm_not_found_json_is_an_error_object(tmp_path, vcsim):
    r = vigil("backup", "web-1", "--json", cfg=write_config(tmp_path, vcsim.url))
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"]["type"] == "user"


@pytest.fixture
def repo_with_a_point(tmp_path, vcsim) -> tuple[Path, str]:
    cfg = write_config(tmp_path, vcsim.url)
    r = vigil("backup", "DC0_H0_VM0", "--json", cfg=cfg)
    assert r.returncode == 0, r.stderr
    return cfg, json.loads(r.stdout)["id"]


@pytest.mark.parametrize(
    "command",
    [
        ["restore", "{p}", "--new-name", "x"],
        ["restore", "{p}", "--to-existing"],
        ["export", "{p}", "-o", "out.img"],
        ["verify", "{p}"],
    ],
)
def test_point_not_found_suggests_vigil_list(repo_with_a_point, command):
    cfg, point = repo_with_a_point
    typo = point[:-1] + ("2" if point[-1] != "2" else "3")
    r = vigil(*[a.format(p=typo) for a in command], cfg=cfg)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"no restore point '{typo}'" in line and "vigil list" in line
    assert point in line, "the close match is suggested"


def test_broken_pipe_is_quiet(repo_with_a_point):
    """`vigil list --json | head -1` must not print a traceback or blame vCenter."""
    import os
    import subprocess
    import sys

    from .clihelp import ROOT

    cfg, _ = repo_with_a_point
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), "list", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away before vigil printed anything
    err = proc.stderr.read()
    assert proc.wait(60) != 0
    assert err == "", err


@pytest.mark.parametrize("command", [["watch"], ["inventory", "--watch"]])
def test_long_running_commands_stop_at_once_on_a_wrong_password(tmp_path, vcsim, command):
    """A daemon retrying a wrong password forever hides the mistake in its log; the first
    login is checked and a refusal ends it with the usual one line."""
    r = vigil(*command, cfg=write_config(tmp_path, vcsim.url), password="wrong", timeout=30)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "login failed for user" in line and PASSWORD_ENV in line


def test_watch_stops_at_once_on_an_untrusted_certificate(tmp_path, make_vcsim):
    sim = make_vcsim(tls=True)
    r = vigil("watch", cfg=write_config(tmp_path, sim.url), timeout=30)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "not trusted" in line and sim.thumbprint in line


def test_watch_with_missing_policies_path_names_policies_path(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, policies="nope", with_policies=False)
    r = vigil("watch", cfg=cfg, timeout=30)
    assert r.returncode == 2
    assert "policies.path" in one_error_line(r.stderr)


def test_list_of_a_mistyped_vm_suggests_the_vm_with_points(repo_with_a_point):
    cfg, _ = repo_with_a_point
    r = vigil("list", "DC0_H0_VM", cfg=cfg)
    assert r.returncode == 0, "an empty listing is not a failure (scripts iterate over it)"
    assert "no restore points of VM 'DC0_H0_VM'; did you mean DC0_H0_VM0?" in r.stdout
    j = vigil("list", "DC0_H0_VM", "--json", cfg=cfg)
    assert j.returncode == 0 and json.loads(j.stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--new-name", "x", "--datastore-map", "LocalDS_0"], "expected SRC=DST"),
        (["--to-existing", "--network-map", "a=b"], "apply to --new-name only"),
        (
            ["--new-name", "x", "--datastore-map", "LocalDS_0=nope"],
            "'nope' not found in the target datacenter",
        ),
    ],
)
def test_restore_maps_are_checked(repo_with_a_point, args, message):
    cfg, point = repo_with_a_point
    r = vigil("restore", point, *args, cfg=cfg)
    assert r.returncode == 2, r.stderr
    assert message in one_error_line(r.stderr)
