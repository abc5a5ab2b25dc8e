"""vigil.toml validation: every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from protector.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[vcenter]
url = "https://vc.example.com/sdk"
user = "backup@vsphere.local"
password_env = "VIGIL_TEST_PW"
[repository]
path = "repo"
[policies]
path = "policies.d"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vigil.toml"
    p.write_text(text)
    return p


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config.example.toml")
    assert cfg.transport.modes == ("vddk", "http", "file")
    assert cfg.daemon.status_listen.startswith("127.0.0.1:")


def test_relative_paths_resolve_next_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.repository.path == str(tmp_path / "repo")
    assert cfg.policies_path == str(tmp_path / "policies.d")


def test_unknown_keys_and_bad_types_all_reported_with_paths(tmp_path):
    text = GOOD.replace('user = "backup@vsphere.local"', 'usr = "x"') + (
        '[limits]\nconcurrent_backups = 0\nper_hots = 2\n[transport]\nmodes = ["nbd"]\n'
    )
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    # file:line: key — the line of the key, or of its table when the key is missing
    assert f"{p}:4: vcenter.usr: unknown key" in msg
    assert f"{p}:2: vcenter.user: required key is missing" in msg
    assert f"{p}:12: limits.per_hots: unknown key" in msg and "did you mean per_host?" in msg
    assert f"{p}:11: limits.concurrent_backups: must be at least 1" in msg
    assert f"{p}:14: transport.modes: each must be one of vddk, http, file" in msg


def test_password_never_inline_and_http_refused_remote(tmp_path):
    text = GOOD.replace('password_env = "VIGIL_TEST_PW"', 'password = "hunter2"').replace(
        "https://", "http://"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    msg = str(exc.value)
    assert "vcenter.password: unknown key" in msg
    assert "vcenter.url: refusing plain http:// to vc.example.com" in msg
    assert "hunter2" not in msg


def test_password_from_env_and_file(tmp_path, monkeypatch):
    cfg = load_config(write(tmp_path, GOOD))
    monkeypatch.delenv("VIGIL_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="VIGIL_TEST_PW is not set"):
        cfg.vcenter.password()
    monkeypatch.setenv("VIGIL_TEST_PW", "s3cret")
    assert cfg.vcenter.password() == "s3cret"
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "pw").chmod(0o600)
    cfg2 = load_config(
        write(tmp_path, GOOD.replace('password_env = "VIGIL_TEST_PW"', 'password_file = "pw"'))
    )
    assert cfg2.vcenter.password() == "from-file"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_file_others_can_read_is_refused(tmp_path, mode):
    """Like ssh with a private key: a password or passphrase file that group or others can
    read is refused, naming the key, the file and the chmod that fixes it."""
    text = GOOD.replace('password_env = "VIGIL_TEST_PW"', 'password_file = "pw"')
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    pw.chmod(mode)
    cfg = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError) as exc:
        cfg.vcenter.password()
    msg = str(exc.value)
    assert "vcenter.password_file" in msg and f"chmod 600 {pw}" in msg
    assert "hunter2" not in msg
    pw.chmod(0o600)
    assert cfg.vcenter.password() == "hunter2"


def test_invalid_toml_names_the_file_and_line(tmp_path):
    p = write(tmp_path, GOOD + "\n[limits\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).startswith(f"{p}:11: not valid TOML: Expected ']'")


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="--config PATH or set VIGIL_CONFIG"):
        load_config(tmp_path / "nope.toml")


def test_status_page_off_loopback_needs_a_token(tmp_path):
    open_listen = GOOD + '[daemon]\nstatus_listen = "0.0.0.0:9273"\n'
    with pytest.raises(ConfigError, match="status_token_env so the status page requires"):
        load_config(write(tmp_path, open_listen))
    cfg = load_config(write(tmp_path, open_listen + 'status_token_env = "VIGIL_TOKEN"\n'))
    assert cfg.daemon.status_listen == "0.0.0.0:9273"


@pytest.mark.parametrize("value", ["7", "7:0", "24:00", "07:60", "seven", "07:00:00", ""])
def test_prune_at_must_be_hh_mm(tmp_path, value):
    p = write(tmp_path, GOOD + f'[daemon]\nprune_at = "{value}"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert f'{p}:11: daemon.prune_at: must be a 24-hour time "HH:MM"' in str(exc.value)
    assert repr(value) in str(exc.value)


def test_prune_at_and_failure_cooldown_accepted(tmp_path):
    text = GOOD + '[daemon]\nprune_at = "7:05"\nfailure_cooldown_max = 600\nprune_max_pause = 60\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.daemon.prune_at == "7:05"
    assert cfg.daemon.failure_cooldown_max == 600
    assert cfg.daemon.prune_max_pause == 60
    with pytest.raises(ConfigError, match=r"daemon\.failure_cooldown_max: must be more than 0"):
        load_config(write(tmp_path, GOOD + "[daemon]\nfailure_cooldown_max = 0\n"))


@pytest.mark.parametrize("listen", ["127.0.0.1:65536", "127.0.0.1:99999", "127.0.0.1:"])
def test_status_listen_port_must_be_a_tcp_port(tmp_path, listen):
    p = write(tmp_path, GOOD + f'[daemon]\nstatus_listen = "{listen}"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert f"{p}:11: daemon.status_listen: must be HOST:PORT" in str(exc.value)
    assert "0-65535" in str(exc.value)


@pytest.mark.parametrize("key", ["tag_interval", "reconcile_interval"])
def test_poll_intervals_must_be_positive(tmp_path, key):
    # 0 would poll vCenter in a tight loop; negative makes no sense.
    p = write(tmp_path, GOOD + f"[daemon]\n{key} = 0\n")
    with pytest.raises(ConfigError, match=rf"daemon\.{key}: must be more than 0 seconds, got 0"):
        load_config(p)
