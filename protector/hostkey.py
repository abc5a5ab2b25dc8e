"""The host key file (repository.key_file): 32 random bytes, hex, in a file only vigil's
user can read. A key slot wrapped by it opens the repository without the passphrase's
Argon2id (~0.4 CPU-s per process) and without the passphrase on the host at all; the
passphrase stays the way in for a new host. Format: docs/repository-format.md, Keys."""

from __future__ import annotations

import os
from pathlib import Path

from protector.config_checks import ConfigError, read_secret_file
from repository.backend import owner_to_match
from repository.keys import new_host_key_text, parse_host_key


def read_host_key(path: str, key: str, config_path: str) -> bytes | None:
    """The key in `path`; None when the file does not exist (not made yet on this host).
    A file others may read, or one that does not hold a key, is refused (ConfigError)."""
    if not os.path.lexists(path):
        return None
    text = read_secret_file(path, key, config_path)
    try:
        return parse_host_key(text)
    except ValueError as exc:
        raise ConfigError(
            config_path, [f"{key}: {path}: {exc}; move it aside and run `vigil key add-host`"]
        ) from None


def create_host_key(path: str, key: str, config_path: str) -> tuple[bytes, bool]:
    """The key in `path`, made first (mode 0600, never over an existing file) when it is
    not there: (key, made)."""
    found = read_host_key(path, key, config_path)
    if found is not None:
        return found, False
    target = Path(path)
    text = new_host_key_text()
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process made it a moment ago: use theirs
        again = read_host_key(path, key, config_path)
        if again is None:
            raise ConfigError(config_path, [f"{key}: {path} vanished as it was made"]) from None
        return again, False
    except OSError as exc:
        raise ConfigError(
            config_path,
            [f"{key}: cannot create {path}: {exc.strerror or exc}; make its directory writable"],
        ) from None
    try:
        # root making it for the service (vigil init as root, the daemon as `vigil`): the
        # owner of the directory it is in reads it, as the repository's files do.
        owner = owner_to_match(target)
        if owner:
            os.fchown(fd, *owner)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return parse_host_key(text), True
