"""Several vCenters in vigil.toml: `[vcenters.NAME]` tables, `[vcenter]` alone still valid
(named "default"), both at once refused; errors name `vcenters.NAME.key` and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from protector.config import DEFAULT_VCENTER, ConfigError, load_config

REST = """
[repository]
path = "repo"
[policies]
path = "policies.d"
"""

TWO = """
[vcenters.east]
url = "https://vc-east.example.com/sdk"
user = "backup@vsphere.local"
password_env = "VIGIL_PW_EAST"
[vcenters.west]
url = "https://vc-west.example.com/sdk"
user = "backup@vsphere.local"
password_file = "west.pw"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vigil.toml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    return str(exc.value)


def test_two_named_vcenters_in_file_order(tmp_path):
    cfg = load_config(write(tmp_path, TWO + REST))
    assert list(cfg.vcenters) == ["east", "west"]
    assert cfg.several_vcenters
    assert cfg.vcenter.name == "east"  # the first: what a command uses unless told
    west = cfg.for_vcenter("west")
    assert west.vcenter.url == "https://vc-west.example.com/sdk"
    assert west.vcenter.password_file == str(tmp_path / "west.pw")
    assert west.repository == cfg.repository and west.vcenters == cfg.vcenters


def test_lone_vcenter_is_named_default(tmp_path):
    text = TWO.split("[vcenters.west]")[0].replace("[vcenters.east]", "[vcenter]")
    cfg = load_config(write(tmp_path, text + REST))
    assert list(cfg.vcenters) == [DEFAULT_VCENTER] == ["default"]
    assert not cfg.several_vcenters
    assert cfg.vcenter.key("url") == "vcenter.url"


def test_both_forms_at_once_are_refused_naming_the_file(tmp_path):
    text = '[vcenter]\nurl = "https://vc.example.com"\nuser = "u"\npassword_env = "X"\n'
    msg = problems(tmp_path, text + TWO + REST)
    assert str(tmp_path / "vigil.toml") in msg
    assert "set either [vcenter] (one vCenter) or [vcenters.NAME] tables" in msg


def test_neither_form_is_refused(tmp_path):
    msg = problems(tmp_path, REST)
    assert "[vcenter]: required section is missing (or [vcenters.NAME] tables)" in msg


def test_errors_name_the_vcenters_table_and_its_line(tmp_path):
    text = TWO.replace('user = "backup@vsphere.local"\npassword_file', 'usr = "x"\npassword_file')
    text = text.replace("https://vc-east.example.com/sdk", "http://vc-east.example.com/sdk")
    p = write(tmp_path, text + REST)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert f"{p}:8: vcenters.west.usr: unknown key" in msg
    assert "vcenters.west.user: required key is missing" in msg
    assert f"{p}:3: vcenters.east.url: refusing plain http:// to vc-east.example.com" in msg


def test_missing_password_source_names_the_table(tmp_path):
    msg = problems(tmp_path, TWO.replace('password_file = "west.pw"\n', "") + REST)
    assert "vcenters.west.password_env: required (or vcenters.west.password_file)" in msg


def test_the_same_vcenter_twice_is_refused(tmp_path):
    text = TWO.replace("vc-west.example.com/sdk", "vc-east.example.com")
    msg = problems(tmp_path, text + REST)
    assert "vcenters.west.url: the same vCenter as vcenters.east" in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vcenters = {}\n", "vcenters: must hold one [vcenters.NAME] table per vCenter"),
        ('[vcenters."a b"]\nurl = "https://x"\n', "vcenters.a b: invalid name 'a b'"),
    ],
)
def test_bad_vcenters_tables(tmp_path, text, expected):
    assert expected in problems(tmp_path, text + REST)


def test_unknown_vcenter_name_suggests_one(tmp_path):
    cfg = load_config(write(tmp_path, TWO + REST))
    with pytest.raises(ConfigError) as exc:
        cfg.for_vcenter("wset")
    assert "no vCenter named 'wset' is configured (configured: east, west)" in str(exc.value)
    assert "did you mean west?" in str(exc.value)


def test_secret_errors_name_the_vcenters_key(tmp_path, monkeypatch):
    monkeypatch.delenv("VIGIL_PW_EAST", raising=False)
    cfg = load_config(write(tmp_path, TWO + REST))
    with pytest.raises(ConfigError) as exc:
        cfg.vcenters["east"].password()
    assert "vcenters.east.password_env: environment variable VIGIL_PW_EAST" in str(exc.value)
