"""Text output is safe on a terminal and free of secrets (issue 19, item 10): names from
vCenter (a VM owner chooses their VM's name) cannot drive the admin's terminal, and an error
line quoting a password or session cookie is redacted like the logs."""

from __future__ import annotations

import json
from pathlib import Path

from protector.cli.common import clean
from repository import VmIdentity
from tests.repository.repo_helpers import write_point
from tests.usability.clihelp import vigil

EVIL = "web\x1b]0;owned\x07\x1b[2J\x9b31m\u202egnp.exe\r\nfake line"


def repo_config(tmp_path: Path, url: str = "https://127.0.0.1:9/sdk") -> Path:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{url}"\nuser = "u"\npassword_env = "VIGIL_TEST_PW"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "pol"\n'
    )
    return cfg


def test_clean_escapes_every_control_character_visibly():
    out = clean(EVIL)
    assert all(ch.isprintable() for ch in out), repr(out)
    assert out.startswith("web\\x1b]0;owned\\x07") and "\\u202e" in out and "\\n" in out
    assert clean("plain web-1 / DC0 ü") == "plain web-1 / DC0 ü"


def test_a_vm_name_with_escape_sequences_prints_escaped(tmp_path):
    from repository import Repository

    repo = Repository.init(tmp_path / "repo", chunk_size=64 << 10, passphrase=None)
    identity = VmIdentity("vc-1", "vm-uuid-1", EVIL, f"/DC0/vm/{EVIL}", "vm-1")
    point = write_point(repo, identity, {"d": b"x" * 70000})
    r = vigil("--config", str(repo_config(tmp_path)), "list")
    assert r.returncode == 0, r.stderr
    assert point in r.stdout
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\x9b" not in r.stdout
    assert "\u202e" not in r.stdout and "\r" not in r.stdout and "fake line\n" not in r.stdout
    assert "web\\x1b]0;owned\\x07" in r.stdout
    assert len(r.stdout.splitlines()) == 1  # the name's newline does not forge a line
    # --json is JSON's own escaping: the name round-trips exactly.
    j = vigil("--config", str(repo_config(tmp_path)), "list", "--json")
    assert json.loads(j.stdout)[0]["vm"]["name"] == EVIL


def test_status_text_escapes_names_from_vcenter():
    from protector.cli.status import render

    status = {
        "vcenter": "https://vc",
        "healthy": True,
        "counts": {"ok": 1},
        "policy_errors": [],
        "vms": [{"path": EVIL, "state": "ok", "policy": "p\x1b[31m", "last_error": "x\x07"}],
        "jobs": {"running": [{"vm_name": EVIL}], "queued": []},
    }
    text = render(status)
    assert all(ch.isprintable() for line in text.splitlines() for ch in line), text
    assert len(text.splitlines()) == 5  # vCenter, counts, header, the VM, running


def test_cli_error_lines_are_redacted_like_the_logs(capsys):
    """An exception text quoting a session cookie or a URL with a password (aiohttp and
    pyVmomi errors do) is printed like the logs would: the secret blanked, the rest kept."""
    from protector.cli.app import report_error
    from watcher.soap import VsphereError

    exc = VsphereError(
        'login failed: Cookie: vmware_soap_session="52c1-secret-cookie"; '
        "proxy https://admin:Hunter2Secret@proxy.example/ refused"
    )
    assert report_error(exc, json_output=True) == 1
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "52c1-secret-cookie" not in text and "Hunter2Secret" not in text
        assert "login failed" in text and "proxy.example" in text
    assert json.loads(out)["error"]["message"].count("<redacted>") == 2
