import io
import json

import structlog

from protector import logs


def test_json_lines_with_secrets_redacted():
    buf = io.StringIO()
    logs.configure("info", json=True, stream=buf)
    log = structlog.get_logger("t")
    log.info("login", user="backup", password="hunter2", session_cookie="abc", disk_key=2000)
    log.debug("hidden")
    rec = json.loads(buf.getvalue().strip())
    assert rec["event"] == "login" and rec["level"] == "info"
    assert rec["password"] == "<redacted>" and rec["session_cookie"] == "<redacted>"
    assert rec["user"] == "backup" and rec["disk_key"] == 2000
    assert "hunter2" not in buf.getvalue()
    assert len(buf.getvalue().strip().splitlines()) == 1  # debug filtered at info


def test_unknown_level_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="--log-level: unknown level 'loud'"):
        logs.configure("loud", json=True, stream=io.StringIO())
