"""The log pipeline (protector/logs.py) keeps secrets out of every line: by key at any
depth, by recognisable shape inside strings (headers, exception messages), and in
tracebacks, on both the JSON and the console renderer."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from protector import logs

COOKIE = "52c8f1d2-cookie-value-9e7a"
TOKEN = "tok-31415926535-bearer"
PASSWORD = "Pw-zX81!distinct"


@pytest.fixture(params=[True, False], ids=["json", "console"])
def logged(request) -> io.StringIO:  # type: ignore[no-untyped-def]
    buf = io.StringIO()
    logs.configure("debug", json=request.param, stream=buf)
    yield buf
    logs.configure("warning", json=True, stream=io.StringIO())


def assert_clean(text: str) -> None:
    for secret in (COOKIE, TOKEN, PASSWORD):
        assert secret not in text, f"{secret!r} leaked into the log:\n{text}"


def test_secret_keys_are_redacted_at_any_depth(logged):
    log = structlog.get_logger("t")
    log.info(
        "request",
        headers={"Cookie": f"vmware_soap_session={COOKIE}", "Authorization": f"Bearer {TOKEN}"},
        attempts=[{"password": PASSWORD}],
        authorization=f"Basic {TOKEN}",
        disk_key=2000,
    )
    out = logged.getvalue()
    assert_clean(out)
    assert "2000" in out  # an ordinary "*_key" is not a secret


def test_secret_shapes_inside_strings_are_redacted(logged):
    log = structlog.get_logger("t")
    log.warning("upstream", error=f"GET /folder failed; sent Cookie: vmware_soap_session={COOKIE}")
    log.warning("upstream", error=f"proxy said: Authorization: Bearer {TOKEN} refused")
    log.warning("upstream", error=f"{{'vmware-api-session-id': '{TOKEN}'}}")
    log.warning(f"login with password={PASSWORD} failed")
    out = logged.getvalue()
    assert_clean(out)
    assert "GET /folder failed" in out and "proxy said" in out


def test_tracebacks_are_redacted(logged):
    log = structlog.get_logger("t")

    def connect(password: str) -> None:
        raise ConnectionError(f"handshake failed; headers had vmware_soap_session={COOKIE}")

    try:
        connect(PASSWORD)
    except ConnectionError:
        log.exception("connect.failed")
    out = logged.getvalue()
    assert_clean(out)
    assert "handshake failed" in out and "connect.failed" in out


def test_json_stays_one_object_per_line():
    buf = io.StringIO()
    logs.configure("info", json=True, stream=buf)
    structlog.get_logger("t").info("x", headers={"Cookie": COOKIE}, n=[1, {"token": TOKEN}])
    rec = json.loads(buf.getvalue())
    assert rec["headers"]["Cookie"] == logs.REDACTED and rec["n"][1]["token"] == logs.REDACTED
    assert rec["n"][0] == 1
