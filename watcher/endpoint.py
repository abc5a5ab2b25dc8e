"""Where vCenter is and how to trust it: the `Endpoint` and its TLS options. Free of
aiohttp at import (the pin's class is in pinning.py), so loading a configuration, which
checks each vCenter url here, does not wait for the HTTP stack: `vigil backup` starts its
repository's key derivation before that import, not after it."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp


def normalize_thumbprint(thumbprint: str) -> bytes:
    """Accept `AB:CD:..`, `abcd..` or `sha256:..` forms of a SHA-256 fingerprint."""
    text = thumbprint.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(
            "thumbprint must be a SHA-256 fingerprint (64 hex digits, colons allowed), "
            f"got {thumbprint!r}"
        )
    return bytes.fromhex(text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """Where vCenter is and how to trust it."""

    url: str
    verify_tls: bool = True
    thumbprint: str = ""
    ca_file: str = ""
    connect_timeout: float = 10.0
    request_timeout: float = 300.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None:
            # The url is logged and quoted in errors; never repeat it here.
            raise ValueError(
                "vCenter url must not contain a user or password (https://HOST[/sdk]); set "
                "vcenter.user, and vcenter.password_env or vcenter.password_file"
            )
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"vCenter url must be https://HOST[/sdk], got {self.url!r}")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError(
                f"refusing plain http:// to {parts.hostname}: credentials and data would cross "
                "the network unencrypted; use https:// (http is allowed for loopback only)"
            )
        if self.thumbprint:
            normalize_thumbprint(self.thumbprint)

    @property
    def sdk_url(self) -> str:
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") or "/sdk"
        return f"{parts.scheme}://{parts.netloc}{path}"

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def ssl_option(self) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
        """What aiohttp's `ssl=` takes: pinned fingerprint, verified context, or off."""
        if urlsplit(self.url).scheme == "http":
            return False
        if self.thumbprint:
            # A pin replaces CA validation: the admin vouched for this exact certificate.
            from watcher.pinning import PinnedFingerprint

            return PinnedFingerprint(normalize_thumbprint(self.thumbprint))
        if not self.verify_tls:
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        return ctx

    def ssl_context(self) -> ssl.SSLContext | None:
        """A blocking-client equivalent of ssl_option() (pinning checked by the caller)."""
        if urlsplit(self.url).scheme == "http":
            return None
        if self.thumbprint or not self.verify_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.ca_file or None)


def cert_thumbprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


__all__ = [
    "Endpoint",
    "cert_thumbprint",
    "is_loopback",
    "normalize_thumbprint",
]
