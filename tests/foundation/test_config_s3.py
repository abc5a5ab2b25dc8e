"""vigil.toml: [repository] url = "s3://…" with [repository.s3], and [copies.NAME] tables;
every mistake named by file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from protector.config import ConfigError, load_config

HEAD = """
[vcenter]
url = "https://vc.example.com/sdk"
user = "backup@vsphere.local"
password_env = "VIGIL_TEST_PW"
[policies]
path = "policies.d"
"""

S3 = """[repository]
url = "s3://backups/vigil"
passphrase_env = "VIGIL_PASS"
[repository.s3]
endpoint = "https://s3.example.com"
region = "eu-west-1"
access_key_env = "VIGIL_S3_ACCESS_KEY"
secret_key_file = "s3-secret"
object_lock_days = 30
object_lock_mode = "GOVERNANCE"
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "vigil.toml"
    p.write_text(HEAD + text)
    return load_config(p)


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return str(exc.value)


def test_s3_repository_loads_and_reads_credentials_at_open(tmp_path, monkeypatch):
    cfg = load(tmp_path, S3)
    rc = cfg.repository
    assert rc.url == "s3://backups/vigil" and rc.path == "" and rc.object_lock_days == 30
    assert rc.s3["secret_key_file"] == str(tmp_path / "s3-secret")  # next to the file
    # The credentials are read when the repository is opened, and named when missing.
    monkeypatch.delenv("VIGIL_S3_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"repository\.s3\.access_key_env: .*VIGIL_S3_ACCESS_KEY"):
        rc.s3_options()
    monkeypatch.setenv("VIGIL_S3_ACCESS_KEY", "AK")
    secret = tmp_path / "s3-secret"
    secret.write_text("SK\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"secret_key_file .*readable by others"):
        rc.s3_options()
    secret.chmod(0o600)
    opts = rc.s3_options()
    assert (opts.bucket, opts.prefix, opts.region) == ("backups", "vigil/", "eu-west-1")
    assert (opts.access_key, opts.secret_key, opts.object_lock_mode) == ("AK", "SK", "GOVERNANCE")
    assert "SK" not in repr(opts) and "AK" not in repr(opts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (S3.replace('url = "s3://backups/vigil"', 'url = "s3://backups/vigil"\npath = "r"'),
         "repository: set path (a directory) or url (s3://BUCKET/PREFIX), not both"),
        (S3.replace('url = "s3://backups/vigil"', 'url = "https://backups/vigil"'),
         "repository.url: expected s3://BUCKET/PREFIX"),
        (S3.replace("https://s3.example.com", "http://s3.example.com"),
         "repository.s3.endpoint 'http://s3.example.com': http:// is allowed only for a loopback"),
        (S3.replace('"GOVERNANCE"', '"STRICT"'),
         "repository.s3.object_lock_mode = 'STRICT': expected one of COMPLIANCE, GOVERNANCE"),
        (S3.replace("object_lock_days = 30", "object_lock_days = -1"),
         "repository.s3.object_lock_days = -1: expected an integer >= 0"),
        (S3.replace("region =", "regoin ="), "repository.s3: unknown setting(s) regoin"),
        (S3.replace('secret_key_file = "s3-secret"\n', ""),
         "repository.s3: set both access_key_env/_file and secret_key_env/_file"),
        ("[repository]\npath = \"r\"\n[repository.s3]\nregion = \"x\"\n",
         "repository.s3: applies only with repository.url"),
        ("[repository]\npassphrase_env = \"P\"\n", "repository.path: required key is missing"),
    ],
)  # fmt: skip
def test_s3_mistakes_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_copies_tables(tmp_path: Path) -> None:
    text = S3 + (
        '[copies.offsite]\npath = "offsite-repo"\npassphrase_file = "offsite.pass"\n'
        '[copies.cloud]\nurl = "s3://far/v"\n[copies.cloud.s3]\nregion = "us-west-2"\n'
    )
    cfg = load(tmp_path, text)
    assert sorted(cfg.copies) == ["cloud", "offsite"]
    off = cfg.copies["offsite"]
    assert off.path == str(tmp_path / "offsite-repo") and off.key == "copies.offsite.path"
    assert off.passphrase_file == str(tmp_path / "offsite.pass") and off.name == "offsite"
    assert cfg.copies["cloud"].s3 == {"region": "us-west-2"}
    bad = problems(tmp_path, S3 + '[copies.far]\nurl = "s3://x/y"\npassphrase = "inline"\n')
    assert "copies.far.passphrase: unknown key" in bad
    assert "copies.x y: a copy's name" in problems(tmp_path, S3 + '[copies."x y"]\npath = "p"\n')


POLICY = """
[[policy]]
name = "short"
priority = 10
[policy.select]
names = ["*"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 3
daily = {daily}
"""


def test_policies_shorter_than_the_object_lock_are_refused(tmp_path: Path) -> None:
    from policies.errors import PolicyLoadError
    from protector.policyaccess import load_checked, retention_days

    cfg = load(tmp_path, S3)  # object_lock_days = 30
    (tmp_path / "policies.d").mkdir()
    (tmp_path / "policies.d" / "p.toml").write_text(POLICY.format(daily=7))
    with pytest.raises(PolicyLoadError) as exc:
        load_checked(cfg)
    msg = str(exc.value)
    assert "p.toml" in msg and "short" in msg and "object_lock_days = 30" in msg
    assert "retention keeps points about 7 days" in msg
    (tmp_path / "policies.d" / "p.toml").write_text(POLICY.format(daily=30))
    [policy] = load_checked(cfg)
    assert retention_days(policy) == 30
    # A directory repository has no lock: any retention goes.
    plain = load(tmp_path, '[repository]\npath = "r"\n')
    (tmp_path / "policies.d" / "p.toml").write_text(POLICY.format(daily=1))
    assert len(load_checked(plain)) == 1


COPYING = """
[[policy]]
name = "offsite"
priority = 10
copy_to = {copy_to}
[policy.select]
names = ["*"]
[policy.schedule]
rpo = "24h"
[policy.retention]
daily = 30
{copy_retention}
"""

LOCKED_COPY = (
    '[repository]\npath = "r"\n[copies.cloud]\nurl = "s3://far/v"\n'
    "[copies.cloud.s3]\nobject_lock_days = 14\n"
)


def test_copy_to_and_copy_retention(tmp_path: Path) -> None:
    from policies.errors import PolicyLoadError
    from protector.policyaccess import load_checked, retention_days

    cfg = load(tmp_path, LOCKED_COPY)
    (tmp_path / "policies.d").mkdir()
    p = tmp_path / "policies.d" / "p.toml"

    def refused(copy_to: str, copy_retention: str = "") -> str:
        p.write_text(COPYING.format(copy_to=copy_to, copy_retention=copy_retention))
        with pytest.raises(PolicyLoadError) as exc:
            load_checked(cfg)
        return str(exc.value)

    # A copy vigil.toml lacks: file, policy and key named, with the copies it has.
    msg = refused('["clod"]')
    assert f'{p}: policy "offsite": copy_to[0]: no [copies.clod] in' in msg
    assert "(it has: cloud)" in msg and "did you mean cloud?" in msg
    # The shape of the key, checked by the policy loader itself.
    assert 'copy_to[1]: "cloud" is listed twice' in refused('["cloud", "cloud"]')
    assert "copy_to[0]: expected the name of a [copies.NAME]" in refused("[3]")
    assert "copy_to: expected a list" in refused('"cloud"')
    msg = refused("[]", "[policy.copy_retention]\nkeep_last = 2")
    assert "copy_retention: applies only to a policy with copy_to" in msg
    assert "copy_retention.hourly: unknown key" in refused(
        '["cloud"]', "[policy.copy_retention]\nhourly = 2"
    )
    # Shorter than the copy's object lock: refused like the primary's retention.
    msg = refused('["cloud"]', "[policy.copy_retention]\ndaily = 7")
    assert 'policy "offsite": copy_retention: the copy cloud keeps points about 7 days' in msg
    assert "copies.cloud.s3.object_lock_days = 14" in msg

    p.write_text(COPYING.format(copy_to='["cloud"]', copy_retention=""))
    [policy] = load_checked(cfg)  # copy retention defaults to the retention: 30 days
    assert policy.copy_to == ("cloud",) and policy.copy_retention is None
    assert retention_days(policy, policy.retention_of_copies) == 30
    p.write_text(
        COPYING.format(copy_to='["cloud"]', copy_retention="[policy.copy_retention]\ndaily = 14")
    )
    [policy] = load_checked(cfg)
    assert policy.copy_retention is not None and policy.copy_retention.daily == 14
