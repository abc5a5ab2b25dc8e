"""The [cluster] table: defaults, precise errors naming the key, secrets only from the
environment or a private file, redaction."""

from __future__ import annotations

import os

import pytest

from cluster.config import (
    ClusterConfig,
    ClusterConfigError,
    database_url,
    parse_cluster,
    redact_url,
)


def test_defaults_take_the_host_name():
    cfg = parse_cluster({}, hostname="proxy-7.example.org")
    assert cfg == ClusterConfig(node="proxy-7")
    assert cfg.database_url_env == "VIGIL_DATABASE_URL"


def test_keys_are_parsed():
    cfg = parse_cluster(
        {"node": "proxy-1", "database_url_env": "PG_URL", "host_slots": 3, "stalled_after_s": 20}
    )
    assert (cfg.node, cfg.database_url_env, cfg.host_slots, cfg.stalled_after_s) == (
        "proxy-1",
        "PG_URL",
        3,
        20.0,
    )


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"node": 5}, "cluster.node", "must be a string, not an integer"),
        ({"node": "has space"}, "cluster.node", "not a usable node name"),
        ({"database_url_env": "1BAD"}, "cluster.database_url_env", "not a variable name"),
        ({"host_slots": 0}, "cluster.host_slots", "between 1 and 1000"),
        ({"host_slots": True}, "cluster.host_slots", "must be an integer, not a boolean"),
        ({"stalled_after_s": "30"}, "cluster.stalled_after_s", "must be a number"),
        ({"nodes": "x"}, "cluster.nodes", "unknown key"),
        ({"job_retention_days": 0}, "cluster.job_retention_days", "between 1 and 3650"),
        ({"job_retention_days": "7d"}, "cluster.job_retention_days", "must be a number"),
        (
            {"failed_job_retention_days": 4000},
            "cluster.failed_job_retention_days",
            "between 1 and 3650",
        ),
        (
            {"failed_job_retention_days": False},
            "cluster.failed_job_retention_days",
            "must be a number, not a boolean",
        ),
        ({"database_url": "postgresql://u:pw@h/db"}, "cluster.database_url", "secrets are not"),
        (
            {"database_url_env": "A", "database_url_file": "/x"},
            "cluster.database_url_file",
            "either",
        ),
    ],
)
def test_errors_name_the_key(table, key, words):
    with pytest.raises(ClusterConfigError) as err:
        parse_cluster(table, hostname="h")
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")
    assert words in str(err.value)
    assert "pw" not in str(err.value)


def test_job_retention_defaults_and_keys():
    cfg = parse_cluster({}, hostname="h")
    assert (cfg.job_retention_days, cfg.failed_job_retention_days) == (7.0, 30.0)
    cfg = parse_cluster({"job_retention_days": 2, "failed_job_retention_days": 90.5}, hostname="h")
    assert (cfg.job_retention_days, cfg.failed_job_retention_days) == (2.0, 90.5)
    from cluster.worker import WorkerSettings

    settings = WorkerSettings.from_config(cfg)
    assert (settings.job_retention_days, settings.failed_job_retention_days) == (2.0, 90.5)


def test_bad_default_node_says_it_came_from_the_host_name():
    with pytest.raises(ClusterConfigError, match=r"defaulted from the host name"):
        parse_cluster({}, hostname="bad name")


def test_url_from_the_environment():
    cfg = parse_cluster({"node": "n"})
    url = "postgresql://vigil:s3cret@db:5432/vigil"
    assert database_url(cfg, {"VIGIL_DATABASE_URL": url}) == url
    with pytest.raises(ClusterConfigError, match="VIGIL_DATABASE_URL is not set"):
        database_url(cfg, {})
    with pytest.raises(ClusterConfigError) as err:
        database_url(cfg, {"VIGIL_DATABASE_URL": "mysql://u:s3cret@db/x"})
    assert "s3cret" not in str(err.value)


def test_url_from_a_private_file(tmp_path):
    path = tmp_path / "db-url"
    path.write_text("postgresql://vigil:s3cret@db/vigil\n")
    cfg = parse_cluster({"node": "n", "database_url_file": str(path)})
    os.chmod(path, 0o644)
    with pytest.raises(ClusterConfigError, match=r"readable by others.*chmod 600"):
        database_url(cfg, {})
    os.chmod(path, 0o600)
    assert database_url(cfg, {}) == "postgresql://vigil:s3cret@db/vigil"
    missing = parse_cluster({"node": "n", "database_url_file": str(tmp_path / "nope")})
    with pytest.raises(ClusterConfigError, match="cannot read"):
        database_url(missing, {})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://vigil:s3cret@db:5432/vigil", "postgresql://vigil:<redacted>@db:5432/vigil"),
        ("postgresql://vigil@db/vigil", "postgresql://vigil@db/vigil"),
        (
            "postgresql://db/v?user=a&password=s3cret&x=1",
            "postgresql://db/v?user=a&password=<redacted>&x=1",
        ),
        ("postgresql://u:p%40ss@db/v", "postgresql://u:<redacted>@db/v"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


async def test_connection_errors_never_show_the_password():
    import psycopg
    from pg_server import free_port

    from cluster import db

    url = f"postgresql://vigil:s3cret-pw@127.0.0.1:{free_port()}/vigil"  # nothing listens
    with pytest.raises(psycopg.OperationalError) as err:
        await db.connect(url, "test")
    assert "s3cret-pw" not in str(err.value)
    assert "vigil:<redacted>@127.0.0.1" in str(err.value)


def test_worker_settings_follow_the_config():
    from cluster.worker import WorkerSettings

    cfg = parse_cluster({"node": "p1", "worker_concurrency": 3, "stalled_after_s": 12})
    settings = WorkerSettings.from_config(cfg)
    assert (settings.node, settings.concurrency, settings.stalled_after_s) == ("p1", 3, 12.0)
    # Three missed beats make a worker stalled.
    assert settings.heartbeat_interval_s == 4.0
    assert WorkerSettings.from_config(parse_cluster({"node": "p1"})).heartbeat_interval_s == 10.0


# -- [cluster] in vigil.toml (protector/config.py) ---------------------------------------

_BASE = """
[vcenter]
url = "https://vc.example/sdk"
user = "u"
password_env = "VC_PW"
[repository]
path = "repo"
[policies]
path = "policies.d"
[limits]
per_host = 3
per_datastore = 5
concurrent_backups = 6
"""


def _load(tmp_path, text):
    from protector.config import load_config

    p = tmp_path / "vigil.toml"
    p.write_text(_BASE + text)
    return load_config(p)


def test_vigil_toml_without_cluster_is_one_machine(tmp_path):
    assert _load(tmp_path, "").cluster is None


def test_vigil_toml_cluster_table_carries_the_limits_over(tmp_path):
    cfg = _load(tmp_path, '[cluster]\nnode = "proxy-1"\ndatastore_slots = 2\n').cluster
    assert cfg is not None
    assert (cfg.node, cfg.host_slots, cfg.datastore_slots, cfg.worker_concurrency) == (
        "proxy-1",
        3,  # limits.per_host
        2,  # its own key wins
        6,  # limits.concurrent_backups
    )


def test_vigil_toml_cluster_url_file_is_relative_to_the_config(tmp_path):
    cfg = _load(tmp_path, '[cluster]\nnode = "n1"\ndatastore_slots = 2\n')
    assert cfg.cluster is not None and cfg.cluster.database_url_file == ""
    cfg = _load(tmp_path, '[cluster]\nnode = "n1"\ndatabase_url_file = "db-url"\n')
    assert cfg.cluster.database_url_file == str(tmp_path.resolve() / "db-url")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[cluster]\ndatabase_url = "postgresql://u:pw@db/v"\n', "cluster.database_url: secrets"),
        ("[cluster]\nhost_slots = 0\n", "cluster.host_slots: must be between 1 and 1000"),
        ('[cluster]\nnode = "a b"\n', "cluster.node: 'a b' is not a usable node name"),
        ("[cluster]\nnodes = 1\n", "cluster.nodes: unknown key"),
    ],
)
def test_vigil_toml_cluster_errors_name_the_file_and_key(tmp_path, text, words):
    from protector.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    msg = str(err.value)
    assert words in msg, msg
    assert str(tmp_path / "vigil.toml") in msg
    assert "pw" not in msg.replace("password", "")
