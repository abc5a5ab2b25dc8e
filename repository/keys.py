"""Key material: the master key, its key slots (wrapped by an Argon2id-stretched passphrase
or by a host key), and derived subkeys."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_LEN = 32


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost; stored in each slot so a reader needs nothing else."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 2


# What a slot may ask for. Slots are read from the repository, so their costs are
# untrusted input: an edited slot must not make vigil allocate terabytes or hash for days.
# At most ~10 GiB-passes per slot: about ten times the default's cost on a slow host.
MAX_TIME_COST = 10
MAX_MEMORY_KIB = 1024 * 1024  # 1 GiB
MAX_PARALLELISM = 16
# How many slots one open tries: each may cost up to the bounds above.
MAX_SLOTS_TRIED = 8


# The slot kinds: a passphrase stretched by Argon2id, or a host key (32 random bytes in a
# root-only file on the backup host), which needs no stretching: nobody can guess it.
PASSPHRASE_KDF = "argon2id"
HOST_KEY_KDF = "host-key"


def slot_kind(slot: bytes) -> str | None:
    """The `kdf` a slot names (PASSPHRASE_KDF, HOST_KEY_KDF, or something else), None when
    it is not a JSON object: which secret to try on it."""
    try:
        d = json.loads(slot)
    except ValueError:
        return None
    kind = d.get("kdf") if isinstance(d, dict) else None
    return kind if isinstance(kind, str) else None


def _check_slot(d: dict[str, object], slot_name: str) -> KdfParams:
    if d.get("kdf") != PASSPHRASE_KDF or d.get("cipher") != "aes-256-gcm":
        raise ValueError(
            f"key slot {slot_name}: kdf {d.get('kdf')!r} / cipher {d.get('cipher')!r} are not "
            "argon2id / aes-256-gcm; the slot was edited or damaged"
        )
    params = KdfParams(d["time_cost"], d["memory_kib"], d["parallelism"])  # type: ignore[arg-type]
    limits = {
        "time_cost": (params.time_cost, 1, MAX_TIME_COST),
        "parallelism": (params.parallelism, 1, MAX_PARALLELISM),
        "memory_kib": (params.memory_kib, 8 * max(1, params.parallelism), MAX_MEMORY_KIB),
    }
    for name, (value, low, high) in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(
                f"key slot {slot_name}: {name} {value!r} is outside {low}..{high}; the slot "
                "was edited or damaged (restore it from a copy of keys/)"
            )
    return params


@dataclass(frozen=True, slots=True)
class KeySet:
    """Subkeys used by the format. `enc_key` is None for an unencrypted repository."""

    # Kept out of repr: a KeySet (or a Repository) in a log line or traceback must not
    # print the keys.
    id_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    enc_key: bytes | None = field(repr=False)


def hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(master)


def keyset_from_master(master: bytes) -> KeySet:
    return KeySet(
        id_key=hkdf(master, b"vigil/v1/chunk-id"),
        mac_key=hkdf(master, b"vigil/v1/manifest-mac"),
        enc_key=hkdf(master, b"vigil/v1/encryption"),
    )


def keyset_unencrypted(id_key: bytes) -> KeySet:
    # No secret exists here: the MAC then protects against accidents, not attackers.
    return KeySet(id_key=id_key, mac_key=hkdf(id_key, b"vigil/v1/manifest-mac"), enc_key=None)


def _kek(passphrase: str, salt: bytes, p: KdfParams) -> bytes:
    return hash_secret_raw(
        passphrase.encode("utf-8"),
        salt,
        time_cost=p.time_cost,
        memory_cost=p.memory_kib,
        parallelism=p.parallelism,
        hash_len=KEY_LEN,
        type=Type.ID,
    )


def _slot_aad(repo_id: str) -> bytes:
    return b"vigil/v1/keyslot/" + repo_id.encode()


def config_mac(master: bytes, config: bytes) -> bytes:
    """HMAC-SHA256 of the canonical config under a master-derived key: sealed into each
    key slot so an edited or replaced config (an encryption downgrade) is detected."""
    return hmac.new(hkdf(master, b"vigil/v1/config-mac"), config, hashlib.sha256).digest()


def wrap_master(
    master: bytes, passphrase: str, repo_id: str, params: KdfParams, config: bytes
) -> bytes:
    """A key-slot object (JSON) holding master ‖ config_mac(config) encrypted under
    Argon2id(passphrase). The MAC sits inside the ciphertext so it cannot be stripped."""
    salt, nonce = os.urandom(16), os.urandom(12)
    secret = master + config_mac(master, config)
    wrapped = AESGCM(_kek(passphrase, salt, params)).encrypt(nonce, secret, _slot_aad(repo_id))
    return json.dumps(
        {
            "kdf": PASSPHRASE_KDF,
            "salt": salt.hex(),
            "time_cost": params.time_cost,
            "memory_kib": params.memory_kib,
            "parallelism": params.parallelism,
            "cipher": "aes-256-gcm",
            "nonce": nonce.hex(),
            "wrapped_key": wrapped.hex(),
        },
        sort_keys=True,
    ).encode()


@dataclass(frozen=True, slots=True)
class Unwrapped:
    master: bytes = field(repr=False)
    config_mac: bytes | None  # None in slots written before the config was authenticated


def unwrap_master(slot: bytes, passphrase: str, repo_id: str, slot_name: str) -> Unwrapped | None:
    """The master key (and the sealed config MAC) if `passphrase` opens this slot."""
    try:
        d = json.loads(slot)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        salt = bytes.fromhex(d["salt"])
        nonce, wrapped = bytes.fromhex(d["nonce"]), bytes.fromhex(d["wrapped_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"key slot {slot_name} is malformed: {exc!r}") from exc
    try:
        params = _check_slot(d, slot_name)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"key slot {slot_name} is malformed: {exc!r}") from exc
    try:
        kek = _kek(passphrase, salt, params)
    except HashingError as exc:  # e.g. a salt too short for Argon2
        raise ValueError(f"key slot {slot_name} is malformed: {exc}") from exc
    try:
        secret = AESGCM(kek).decrypt(nonce, wrapped, _slot_aad(repo_id))
    except InvalidTag:
        return None
    if len(secret) not in (KEY_LEN, 2 * KEY_LEN):
        raise ValueError(f"key slot {slot_name} holds {len(secret)} key bytes")
    return Unwrapped(secret[:KEY_LEN], secret[KEY_LEN:] or None)


# -- host-key slots ------------------------------------------------------------------------


def _host_kek(host_key: bytes, salt: bytes) -> bytes:
    # HKDF, not Argon2id: the host key is 256 uniformly random bits, so stretching would
    # add no strength, only the ~0.4 CPU-s every process that opens the repository pays.
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=b"vigil/v1/host-key-slot"
    ).derive(host_key)


def host_key_id(host_key: bytes) -> str:
    """A public fingerprint of a host key (16 hex), so `vigil key list` can tell which
    host's key a slot is for without revealing anything about the key."""
    return hkdf(host_key, b"vigil/v1/host-key-id")[:8].hex()


def wrap_master_for_host(
    master: bytes, host_key: bytes, repo_id: str, config: bytes, host: str
) -> bytes:
    """A key-slot object (JSON) holding master ‖ config_mac(config) encrypted under a key
    derived from `host_key` (HKDF-SHA256 with the slot's salt). `host` is a label for
    people (which machine holds the key), not authenticated."""
    if len(host_key) != KEY_LEN:
        raise ValueError(f"a host key is {KEY_LEN} bytes, not {len(host_key)}")
    salt, nonce = os.urandom(16), os.urandom(12)
    secret = master + config_mac(master, config)
    wrapped = AESGCM(_host_kek(host_key, salt)).encrypt(nonce, secret, _slot_aad(repo_id))
    return json.dumps(
        {
            "kdf": HOST_KEY_KDF,
            "key_id": host_key_id(host_key),
            "host": host,
            "salt": salt.hex(),
            "cipher": "aes-256-gcm",
            "nonce": nonce.hex(),
            "wrapped_key": wrapped.hex(),
        },
        sort_keys=True,
    ).encode()


def unwrap_master_for_host(
    slot: bytes, host_key: bytes, repo_id: str, slot_name: str
) -> Unwrapped | None:
    """The master key (and the sealed config MAC) if `host_key` opens this host-key slot;
    None when the slot is another key's."""
    try:
        d = json.loads(slot)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("kdf") != HOST_KEY_KDF or d.get("cipher") != "aes-256-gcm":
            raise ValueError(f"kdf {d.get('kdf')!r} / cipher {d.get('cipher')!r}")
        salt = bytes.fromhex(d["salt"])
        nonce, wrapped = bytes.fromhex(d["nonce"]), bytes.fromhex(d["wrapped_key"])
        if len(salt) < 16 or len(nonce) != 12:
            raise ValueError(f"salt of {len(salt)} bytes, nonce of {len(nonce)}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"key slot {slot_name} is malformed: {exc!r}") from exc
    try:
        secret = AESGCM(_host_kek(host_key, salt)).decrypt(nonce, wrapped, _slot_aad(repo_id))
    except InvalidTag:
        return None
    if len(secret) != 2 * KEY_LEN:  # host-key slots were always sealed
        raise ValueError(f"key slot {slot_name} holds {len(secret)} key bytes")
    return Unwrapped(secret[:KEY_LEN], secret[KEY_LEN:])


def parse_host_key(text: str) -> bytes:
    """A host key file's content: 64 hex digits (one line). ValueError says what is wrong
    without echoing the content."""
    value = text.strip()
    if len(value) != 2 * KEY_LEN or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(
            f"a host key file holds {2 * KEY_LEN} hex digits on one line (as `vigil key "
            f"add-host` writes it); this one holds {len(value)} characters"
        )
    return bytes.fromhex(value)


def new_host_key_text() -> str:
    return os.urandom(KEY_LEN).hex() + "\n"
