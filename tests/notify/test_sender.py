"""Notifier against real receivers on loopback: Apprise's JSON webhook posting to a tiny HTTP
server, and its e-mail going to an SMTP server (aiosmtpd) that checks the login."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from protector.config import ConfigError, NotifyConfig, parse_config
from protector.notify.events import Kind
from protector.notify.sender import Notifier


class Webhook:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    async def handle_DATA(self, server, session, envelope):
        self.mails.append((session.auth_data, envelope.rcpt_tos, envelope.content))
        return "250 OK"

    def __init__(self) -> None:
        self.mails: list[tuple[object, list[str], bytes]] = []


def _auth(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"vigil" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, auth_data=auth_data.login if ok else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def smtp():
    box = Mailbox()
    ctl = Controller(
        box,
        hostname="127.0.0.1",
        port=_free_port(),
        authenticator=_auth,
        auth_require_tls=False,  # loopback only; a real relay takes mailtos:// (TLS)
    )
    ctl.start()
    yield box, ctl.port
    ctl.stop()


def _urls_file(tmp_path: Path, *urls: str, mode: int = 0o600) -> str:
    path = tmp_path / "notify.urls"
    path.write_text("# vigil notification targets\n" + "\n".join(urls) + "\n")
    os.chmod(path, mode)
    return str(path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fifty_failures_reach_webhook_and_mailbox_as_one_message_each(tmp_path, webhook, smtp):
    box, smtp_port = smtp
    cfg = NotifyConfig(
        urls_file=_urls_file(
            tmp_path,
            f"json://127.0.0.1:{webhook.port}/hooks/vigil",
            f"mailto://vigil:s3cret@127.0.0.1:{smtp_port}"
            "?from=vigil@example.com&to=admin@example.com",
        ),
        status_url="http://backup.example:9273/status",
        min_interval=300,
        group_window=30,
    )
    clock = Clock()
    n = Notifier(cfg, clock=clock)
    n.prepare()
    for i in range(50):
        n.failing(f"web{i:02d}", "CreateSnapshot_Task: disk locked")
    assert asyncio.run(n.flush()) == 0  # still collecting
    clock.now += 30
    assert asyncio.run(n.flush()) == 1

    [(path, post)] = webhook.posts
    assert path == "/hooks/vigil"
    assert post["title"] == "vigil: 50 VMs failing their backups"
    assert post["type"] == "failure"
    assert "web00, web01, web02 … and 47 more" in post["message"]
    assert "http://backup.example:9273/status" in post["message"]

    [(login, rcpt, raw)] = box.mails
    assert login == b"vigil" and rcpt == ["admin@example.com"]
    mail = message_from_bytes(raw)
    assert mail["Subject"] == "vigil: 50 VMs failing their backups"
    text = "".join(p.get_payload(decode=True).decode() for p in mail.walk() if not p.is_multipart())
    assert "and 47 more" in text

    # Within min_interval a further failure waits; the recovery of one is its own kind.
    n.failing("web50", "again")
    n.succeeded("web07")
    n.succeeded("db01")  # never failing: no news
    clock.now += 60
    assert asyncio.run(n.flush()) == 1
    assert webhook.posts[-1][1]["title"] == "vigil: VM backed up again: web07"
    assert webhook.posts[-1][1]["type"] == "success"
    clock.now += 300
    asyncio.run(n.flush())
    assert webhook.posts[-1][1]["title"] == "vigil: VM backup failing: web50"
    assert len(webhook.posts) == 3


def test_background_task_delivers_and_the_url_can_come_from_the_environment(webhook, monkeypatch):
    monkeypatch.setenv("VIGIL_TEST_NOTIFY_URLS", f"json://127.0.0.1:{webhook.port}/x")
    n = Notifier(NotifyConfig(urls_env="VIGIL_TEST_NOTIFY_URLS", group_window=0))

    async def scenario() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(n.run(stopping))
        n.report(Kind.POLICY_REJECTED, "policies", "gold.yaml: rpo: must be a duration")
        for _ in range(200):  # bounded wait for the delivery, not a timing assertion
            if webhook.posts:
                break
            await asyncio.sleep(0.05)
        stopping.set()
        n._wake.set()
        await task

    asyncio.run(scenario())
    [(_, post)] = webhook.posts
    assert post["title"] == "vigil: policy files rejected: policies"
    assert "gold.yaml: rpo: must be a duration" in post["message"]


def test_a_receiver_that_is_down_does_not_raise(tmp_path):
    port = _free_port()  # nothing listens there
    n = Notifier(NotifyConfig(inline_urls=(f"json://127.0.0.1:{port}/x",), group_window=0))
    n.report(Kind.PRUNE_ERROR, "prune", "lock timeout")
    assert asyncio.run(n.flush()) == 1
    assert n.sent == []


def test_urls_file_readable_by_others_is_refused(tmp_path):
    cfg = NotifyConfig(urls_file=_urls_file(tmp_path, "json://127.0.0.1/x", mode=0o644))
    with pytest.raises(ConfigError, match=r"notify.urls_file: .* readable by others"):
        Notifier(cfg).prepare()


def test_unknown_url_and_missing_env_are_refused_at_start(monkeypatch):
    with pytest.raises(ConfigError, match=r"URL #1 \(nosuch://…\) is not one Apprise"):
        Notifier(NotifyConfig(inline_urls=("nosuch://secret-token@x",))).prepare()
    monkeypatch.delenv("VIGIL_NOTIFY_URLS", raising=False)
    with pytest.raises(ConfigError, match="VIGIL_NOTIFY_URLS is not set"):
        Notifier(NotifyConfig(urls_env="VIGIL_NOTIFY_URLS")).prepare()


def _doc(notify: dict) -> dict:
    return {
        "vcenter": {"url": "https://vc.example/sdk", "user": "u", "password_env": "P"},
        "repository": {"path": "repo"},
        "policies": {"path": "policies"},
        "notify": notify,
    }


def test_config_section(tmp_path):
    cfg = parse_config(
        _doc(
            {
                "urls_file": "notify.urls",
                "status_url": "https://b/status",
                "min_interval": 600,
            }
        ),
        str(tmp_path / "vigil.toml"),
    )
    assert cfg.notify is not None and cfg.notify.enabled
    assert cfg.notify.urls_file == str(tmp_path / "notify.urls")
    assert cfg.notify.min_interval == 600 and cfg.notify.status_url == "https://b/status"
    assert parse_config(_doc({}) | {"notify": {}}, "v.toml").notify is None


def test_config_refuses_a_password_in_the_file_and_unknown_keys():
    with pytest.raises(ConfigError) as exc:
        parse_config(
            _doc({"urls": ["mailto://me:hunter2@mail.example"], "min_intervall": 5}), "v.toml"
        )
    text = str(exc.value)
    assert "notify.urls[0]: holds a password" in text
    assert "notify.min_intervall: unknown key" in text
    assert "hunter2" not in text


def test_breaches_are_edges_and_their_end_is_a_recovery():
    clock = Clock()
    n = Notifier(NotifyConfig(inline_urls=("json://127.0.0.1/x",), group_window=0), clock=clock)
    n.breaches({"a": "newest point 30h old (gold)"})
    n.breaches({"a": "newest point 31h old (gold)"})  # still breached: not a new event
    [msg] = n.batcher.due(clock.now)
    assert msg.kind is Kind.RPO_BREACH and "a: newest point 30h old" in msg.body
    n.failing("b", "boom")
    n.breaches({"b": "newest point 25h old (gold)"})
    n.breaches({})  # a back within its RPO; b still failing, so no recovery for b yet
    clock.now += 1000
    due = {m.kind: m for m in n.batcher.due(clock.now)}
    assert due[Kind.RECOVERED].title == "vigil: VM backed up again: a"
    assert "b" in due[Kind.FAILING].title


class _ClockThatTells:
    """A fixed clock that records being read: Notifier.run reads it in the same step as it
    starts to wait (flush has nothing to send), so once read, the task is in its wait."""

    def __init__(self) -> None:
        self.read = False

    def __call__(self) -> float:
        self.read = True
        return 1000.0


async def test_a_cancel_landing_as_an_event_wakes_the_loop_still_cancels_it():
    """Python 3.11's asyncio.wait_for(event.wait(), t) returns True when the task is
    cancelled as the event is set (CPython gh-86296): the loop went round and waited again,
    and Supervisor.cancel_all, which awaits every task without a limit, hung the daemon's
    SIGTERM. Every loop that waits for an event with a timeout had that shape."""
    clock = _ClockThatTells()
    # group_window 30 s on a clock that stands still: the event below is never due, so
    # the loop touches no receiver (the port is never dialled).
    n = Notifier(NotifyConfig(inline_urls=("json://127.0.0.1:9/x",)), clock=clock)
    task = asyncio.create_task(n.run(asyncio.Event()))
    for _ in range(100):  # event-loop steps, not time: run's first step reads the clock
        if clock.read:
            break
        await asyncio.sleep(0)
    assert clock.read and not task.done()
    n.report(Kind.PRUNE_ERROR, "prune", "lock timeout")  # wakes the loop ...
    task.cancel()  # ... in the same turn as the cancel arrives
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, "the cancel was swallowed: the loop runs on"
    assert task.cancelled()
