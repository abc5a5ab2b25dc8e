"""Opening the vCenter session from the configuration, with errors phrased for admins."""

from __future__ import annotations

from watcher.session import Credentials, LoginError, Session
from watcher.soap import TlsPinError, VsphereConnectionError, VsphereError

from .config import Config, endpoint_of
from .errors import UserError


def make_session(cfg: Config, *, keepalive_interval: float = 300.0) -> Session:
    creds = Credentials(cfg.vcenter.user, cfg.vcenter.password())
    return Session(endpoint_of(cfg), creds, keepalive_interval=keepalive_interval)


async def open_session(cfg: Config, *, keepalive_interval: float = 300.0) -> Session:
    """A connected session, or a UserError that says what to do next."""
    session = make_session(cfg, keepalive_interval=keepalive_interval)
    try:
        await session.connect()
    except LoginError as exc:
        await session.client.close()
        raise UserError(f"{exc}; check vcenter.user and the password source") from None
    except TlsPinError as exc:
        await session.client.close()
        raise UserError(str(exc)) from None
    except VsphereConnectionError as exc:
        await session.client.close()
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            hint = (
                "; the certificate is not trusted: install the vCenter CA (vcenter.ca_file) "
                "or pin its SHA-256 thumbprint (vcenter.thumbprint)"
            )
        raise UserError(f"{exc}{hint}") from None
    except VsphereError as exc:
        await session.client.close()
        raise UserError(f"vCenter at {cfg.vcenter.url}: {exc}") from None
    return session
