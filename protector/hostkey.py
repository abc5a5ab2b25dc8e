"""The host key file (repository.key_file): 32 random bytes, hex, in a file only vigil's
user can read. A key slot wrapped by it opens the repository without the passphrase's
Argon2id (~0.4 CPU-s per process) and without the passphrase on the host at all; the
passphrase stays the way in for a new host. Format: docs/repository-format.md, Keys.

The file is a key to every backup, so what is found there is trusted only as far as a
private key would be: no symbolic link, owned by root, us or the owner of its directory
(the service's user), readable by nobody else, in a directory nobody else may write."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from protector.config_checks import ConfigError, private_dir_owners
from repository.backend import owner_to_match
from repository.keys import new_host_key_text, parse_host_key

MAX_KEY_FILE = 4096  # a key is 65 bytes; anything much larger is not one


def _problem(config_path: str, key: str, text: str) -> ConfigError:
    return ConfigError(config_path, [f"{key}: {text}"])


def _owners(path: Path, key: str, config_path: str) -> set[int]:
    """Who may own the key file (config_checks.private_dir_owners), its directory checked."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise _problem(
            config_path,
            key,
            f"{parent} (the directory of {path}): {exc.strerror or exc}; create it (mode 0700, "
            "owned by the user vigil runs as)",
        ) from None
    owners = private_dir_owners(st)
    if owners is None:
        raise _problem(
            config_path,
            key,
            f"{parent} is writable by group or others (mode {st.st_mode & 0o777:04o}), so "
            f"anyone could have put {path.name} there; run `chmod go-w {parent}`",
        )
    return owners


def read_host_key(path: str, key: str, config_path: str) -> bytes | None:
    """The key in `path`; None when the file does not exist (not made yet on this host).
    Refused (ConfigError naming the key and what to do): a symbolic link, a file others may
    read or that an unexpected user owns, one in a directory others may write, one that
    does not hold a key."""
    target = Path(path)
    owners = _owners(target, key, config_path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _problem(
                config_path, key, f"{path} is a symbolic link; name the key file itself"
            ) from None
        raise _problem(config_path, key, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _problem(config_path, key, f"{path} is not a regular file")
        if st.st_uid not in owners:
            raise _problem(
                config_path,
                key,
                f"{path} belongs to uid {st.st_uid}, not to root, this user or the owner of "
                "its directory: someone else may know the key; move it aside and run "
                "`vigil key add-host`",
            )
        if st.st_mode & 0o077:
            raise _problem(
                config_path,
                key,
                f"{path} is readable by others (mode {st.st_mode & 0o777:04o}); run `chmod "
                f"600 {path}`, and since the key may be out, `vigil key add-host` with a new "
                "file and `vigil key remove` of the old slot",
            )
        raw = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    fix = "; move it aside and run `vigil key add-host`"
    if len(raw) > MAX_KEY_FILE:
        raise _problem(config_path, key, f"{path} is far larger than a key file{fix}")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _problem(config_path, key, f"{path} does not hold text{fix}") from None
    try:
        return parse_host_key(text)
    except ValueError as exc:
        raise _problem(config_path, key, f"{path}: {exc}{fix}") from None


def create_host_key(path: str, key: str, config_path: str) -> tuple[bytes, bool]:
    """The key in `path`, made first (mode 0600, the directory owner's, never over an
    existing file, never half-written) when it is not there: (key, made)."""
    found = read_host_key(path, key, config_path)
    if found is not None:
        return found, False
    target = Path(path)
    # root making it for the service (vigil init as root, the daemon as `vigil`): the owner
    # of the directory reads it, as the repository's files are the repository's owner's.
    owner = owner_to_match(target)
    text = new_host_key_text().encode()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if owner:
                os.fchown(fd, *owner)
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)  # all or nothing, and never over a key made meanwhile
        except FileExistsError:
            pass  # another process made it a moment ago: use theirs, read below
    except OSError as exc:
        raise _problem(config_path, key, f"cannot create {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    made = read_host_key(path, key, config_path)
    if made is None:
        raise _problem(config_path, key, f"{path} vanished as it was made")
    return made, made == parse_host_key(text.decode())
