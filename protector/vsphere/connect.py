"""Opening the vCenter session from the configuration, with errors phrased for admins."""

from __future__ import annotations

import asyncio
import os
import ssl
from urllib.parse import urlsplit

import aiohttp

from protector.config import Config, endpoint_of
from protector.errors import UserError
from watcher.session import Credentials, LoginError, Session
from watcher.soap import (
    TlsPinError,
    VsphereConnectionError,
    VsphereError,
    VsphereTimeout,
    cert_thumbprint,
)


def make_session(cfg: Config, *, keepalive_interval: float = 300.0) -> Session:
    creds = Credentials(cfg.vcenter.user, cfg.vcenter.password())
    return Session(endpoint_of(cfg), creds, keepalive_interval=keepalive_interval)


async def connect_session(cfg: Config, *, keepalive_interval: float = 300.0) -> Session:
    """A connected session; on failure the HTTP client is closed (no leaked connections)
    and vSphere's own error is raised, for callers that retry (the watcher)."""
    session = make_session(cfg, keepalive_interval=keepalive_interval)
    try:
        await session.connect()
    except BaseException:
        await session.client.close()
        raise
    return session


async def open_session(cfg: Config, *, keepalive_interval: float = 300.0) -> Session:
    """A connected session, or a UserError that says what to do next."""
    try:
        return await connect_session(cfg, keepalive_interval=keepalive_interval)
    except VsphereError as exc:
        raise UserError(await explain_connect_error(cfg, exc)) from None


def wont_heal(exc: VsphereError) -> bool:
    """Failures that retrying cannot fix (credentials, certificates), unlike an outage."""
    if isinstance(exc, (LoginError, TlsPinError)):
        return True
    return isinstance(exc, VsphereConnectionError) and untrusted_certificate(exc) is not None


def untrusted_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure a connection error comes from, if that is what
    it was: found by type along the cause chain (the watcher raises `from` the aiohttp
    error), not by the wording of a message."""
    seen: BaseException | None = exc
    while seen is not None:
        # aiohttp's error is itself an ssl.CertificateError: look inside it first.
        if isinstance(seen, aiohttp.ClientConnectorCertificateError):
            err = seen.certificate_error
            return err if isinstance(err, ssl.SSLCertVerificationError) else None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def password_source(cfg: Config) -> str:
    v = cfg.vcenter
    if v.password_env:
        return f"${v.password_env} ({v.key('password_env')})"
    return f"{v.password_file} ({v.key('password_file')})"


async def explain_connect_error(cfg: Config, exc: VsphereError) -> str:
    """One line for a failed login or connection: what failed, and the key to fix."""
    vc = cfg.vcenter
    if isinstance(exc, LoginError):
        return f"{exc}; check {vc.key('user')} and the password in {password_source(cfg)}"
    if isinstance(exc, TlsPinError):
        return str(exc)  # names both thumbprints and vcenter.thumbprint
    if isinstance(exc, VsphereTimeout):
        return (
            f"vCenter at {vc.url} did not answer within {vc.connect_timeout:g} s "
            f"({vc.key('connect_timeout')}); check {vc.key('url')} in {cfg.path} and the network"
        )
    if isinstance(exc, VsphereConnectionError):
        if (cert_error := untrusted_certificate(exc)) is not None:
            return await _untrusted_certificate(cfg, cert_error)
        return (
            f"cannot reach vCenter at {vc.url}: {_reason(exc)}; check {vc.key('url')} in "
            f"{cfg.path} and that this host can reach it"
        )
    return f"vCenter at {vc.url}: {exc}"


def _reason(exc: BaseException) -> str:
    """The OS-level reason under aiohttp's wrapping ("Connection refused", a DNS failure)."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        os_err = cause.os_error
        if os_err.errno and os_err.errno > 0:
            return os.strerror(os_err.errno)  # asyncio's text hides it ("Connect call failed")
        return os_err.strerror or str(os_err)
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("cannot reach vCenter at") else text


async def _untrusted_certificate(cfg: Config, exc: ssl.SSLCertVerificationError) -> str:
    why = (exc.verify_message or "").strip() or "not trusted"
    vc = cfg.vcenter
    parts = urlsplit(vc.url)
    thumbprint = await fetch_thumbprint(parts.hostname or "", parts.port or 443)
    pin = (
        f'or, once you have checked it is vCenter\'s, pin it: thumbprint = "{thumbprint}"'
        if thumbprint
        else f"or pin its SHA-256 thumbprint ({vc.key('thumbprint')})"
    )
    return (
        f"TLS certificate of {parts.hostname} is not trusted ({why}); in [{vc.table}] of "
        f"{cfg.path} set {vc.key('ca_file')} to the CA that signed it, {pin} "
        f"({vc.key('thumbprint')})"
    )


async def fetch_thumbprint(host: str, port: int, timeout: float = 5.0) -> str | None:
    """The SHA-256 thumbprint of the certificate `host` presents, read without trusting it
    (only to show the admin what to check and pin), or None when it cannot be read."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
        return cert_thumbprint(der) if der else None
    finally:
        writer.close()
