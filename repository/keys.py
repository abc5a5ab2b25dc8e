"""Key material: the master key, its Argon2id-wrapped key slots, and derived subkeys."""

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


def _check_slot(d: dict[str, object], slot_name: str) -> KdfParams:
    if d.get("kdf") != "argon2id" or d.get("cipher") != "aes-256-gcm":
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
            "kdf": "argon2id",
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
