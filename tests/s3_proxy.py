"""Loopback proxies in front of a real SeaweedFS, re-signing each request (SigV4 covers the
host and every header, so a proxy that changes anything must sign again):

- IgnoringProxy: drops `If-None-Match`, as some S3 clones silently do;
- with `fail_first=N`: answers the first N requests 503 SlowDown (throttling);
- with `before=f`: calls f(method, path) before relaying each request (a test kills the
  server there, at an exact point of a copy, instead of racing it with a timer)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_HOP = {"host", "authorization", "x-amz-date", "if-none-match", "connection", "content-length"}


_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class IgnoringProxy:
    def __init__(
        self,
        upstream: str,
        access_key: str,
        secret_key: str,
        *,
        strip: bool = True,
        fail_first: int = 0,
        before: Callable[[str, str], None] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        creds = Credentials(access_key, secret_key)
        proxy = self
        self.failures_left = fail_first
        self.requests = 0
        self._lock = threading.Lock()
        hop = _HOP if strip else _HOP - {"if-none-match"}

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with proxy._lock:
                    proxy.requests += 1
                    fail = proxy.failures_left > 0
                    proxy.failures_left -= int(fail)
                if before is not None:
                    before(self.command, self.path)
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOWDOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                req = AWSRequest(self.command, proxy.upstream + self.path, headers, body)
                S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
                out = urllib.request.Request(
                    req.url, data=body or None, headers=dict(req.headers), method=self.command
                )
                try:
                    resp: Any = urllib.request.urlopen(out, timeout=30)
                except urllib.error.HTTPError as err:
                    resp = err
                except urllib.error.URLError:
                    # The server is gone: drop the connection unanswered, as it would.
                    self.close_connection = True
                    return
                data = resp.read()
                self.send_response(resp.status if hasattr(resp, "status") else resp.code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> IgnoringProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
