"""The stored-object envelope shared by chunks, indexes, manifests and tombstones.

    magic "VIGL" | version u8 | type u8 | flags u8 | reserved u8 | crc32c u32le | payload

The CRC covers the first 8 header bytes and the payload, so a scrub without the key
finds bit rot. Encrypted payload = nonce(12) ‖ AES-256-GCM(body) with
AAD = version ‖ object id(32) ‖ type ‖ flags; body = zstd frame or raw bytes.
"""

from __future__ import annotations

import os
import struct
import threading
from enum import IntEnum

import blake3
import google_crc32c
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from repository.errors import CorruptObjectError
from repository.keys import KeySet

MAGIC = b"VIGL"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBBBI")
NONCE_LEN = 12
FLAG_ZSTD = 0x01
FLAG_ENCRYPTED = 0x02
ZERO_ID = bytes(32)  # sentinel for an all-zero chunk: never stored
ZSTD_LEVEL = 1
# Level 1's fast strategy with a window over a whole 4 MiB chunk (window_log 22: no CPU
# cost measured) and a hash table of 2^15 entries (level 1's own: 2^14; 2^17 before issue
# 18's third part). On the benchmark image's 626 MiB of non-zero 1 MiB chunks (thread CPU time):
# hash_log 17 2.12-2.19 s, 350.9 MiB; 15: 1.67 s, 359.3 MiB; plain level 1 (borg's zstd,1)
# 1.37-1.39 s, 366.3 MiB. Compression was ~45 % of a full backup's worker CPU, but plain
# level 1 put the repository at 1.050x restic's size in bench_repository.py (goal <= 1.05x):
# 15 keeps most of the CPU saving with a margin. Objects written with any of them decode
# the same way.
ZSTD_PARAMS = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, window_log=22, hash_log=15)


class ObjectType(IntEnum):
    CHUNK = 1
    INDEX = 2
    MANIFEST = 3
    TOMBSTONE = 4
    HEAD = 5
    PIN = 6  # keeps a point past retention (Repository.pin)


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # One per thread: a ZstdCompressor shared between threads crashes.
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(compression_params=ZSTD_PARAMS)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def object_id(keys: KeySet, data: bytes) -> bytes:
    """Keyed BLAKE3-256 of the plaintext."""
    return blake3.blake3(data, key=keys.id_key).digest()


def name_id(keys: KeySet, name: str) -> bytes:
    """The AAD id of a named (not content-addressed) object such as a manifest."""
    return blake3.blake3(b"vigil/v1/name/" + name.encode(), key=keys.id_key).digest()


def chunk_key(chunk_id: bytes) -> str:
    h = chunk_id.hex()
    return f"chunks/{h[:2]}/{h}"


def encode(keys: KeySet, otype: ObjectType, oid: bytes, plaintext: bytes) -> bytes:
    body = _compressor().compress(plaintext)
    flags = 0
    if len(body) < len(plaintext):
        flags |= FLAG_ZSTD
    else:
        # Stored raw; the CRC (and a bytes result) need an immutable buffer.
        body = plaintext if isinstance(plaintext, bytes) else bytes(plaintext)
    if keys.enc_key is not None:
        flags |= FLAG_ENCRYPTED
        nonce = os.urandom(NONCE_LEN)
        aad = bytes([FORMAT_VERSION]) + oid + bytes([otype, flags])
        body = nonce + AESGCM(keys.enc_key).encrypt(nonce, body, aad)
    head = HEADER.pack(MAGIC, FORMAT_VERSION, otype, flags, 0, 0)[:8]
    crc = google_crc32c.extend(google_crc32c.value(head), body)
    return head + struct.pack("<I", crc) + body


def _inflate(key: str, body: bytes | memoryview, max_size: int) -> bytes:
    declared = zstandard.frame_content_size(body)
    if declared > max_size:
        raise CorruptObjectError(
            key, f"declares {declared} bytes, larger than the {max_size} allowed"
        )
    try:
        # Without a declared size (our writers always declare it) the buffer is capped.
        return _decompressor().decompress(body, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise CorruptObjectError(key, f"zstd (at most {max_size} bytes): {exc}") from None


def check_crc(key: str, blob: bytes) -> tuple[int, int]:
    """Envelope and CRC check without any key; returns (type, flags)."""
    if len(blob) < HEADER.size:
        raise CorruptObjectError(key, f"truncated ({len(blob)} bytes)")
    magic, version, otype, flags, _res, crc = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptObjectError(key, "bad magic")
    if version != FORMAT_VERSION:
        raise CorruptObjectError(key, f"unsupported format version {version}")
    if google_crc32c.extend(google_crc32c.value(blob[:8]), blob[12:]) != crc:
        raise CorruptObjectError(key, "CRC32C mismatch (bit rot or truncated write)")
    return otype, flags


# What a named object (manifest, tombstone, head) may inflate to: a manifest holds a VM's
# config and VSS document, a few MiB at the most.
MAX_NAMED = 64 << 20


def decode(
    keys: KeySet,
    key: str,
    blob: bytes,
    otype: ObjectType,
    oid: bytes,
    verify_id: bool,
    max_size: int = MAX_NAMED,
) -> bytes:
    """The plaintext of a stored object, after every check the format allows.

    `verify_id` re-hashes content-addressed objects against `oid`. The plaintext may not
    exceed `max_size` (a chunk: the chunk size; an index: its disk's slot count): a forged
    object that would inflate further is refused before it is inflated."""
    got_type, flags = check_crc(key, blob)
    if got_type != otype:
        raise CorruptObjectError(key, f"object type {got_type}, expected {int(otype)}")
    body: bytes | memoryview = memoryview(blob)[HEADER.size :]
    if flags & FLAG_ENCRYPTED:
        if keys.enc_key is None:
            raise CorruptObjectError(key, "encrypted object in an unencrypted repository")
        aad = bytes([FORMAT_VERSION]) + oid + bytes([otype, flags])
        try:
            body = AESGCM(keys.enc_key).decrypt(body[:NONCE_LEN], body[NONCE_LEN:], aad)
        except InvalidTag:
            raise CorruptObjectError(key, "authentication failed (tampered or damaged)") from None
    elif keys.enc_key is not None:
        raise CorruptObjectError(key, "unencrypted object in an encrypted repository")
    if flags & FLAG_ZSTD:
        plain = _inflate(key, body, max_size)
    elif len(body) > max_size:
        raise CorruptObjectError(key, f"{len(body)} bytes, larger than the {max_size} allowed")
    else:
        plain = bytes(body)
    if verify_id and object_id(keys, plain) != oid:
        raise CorruptObjectError(key, "content does not match its id")
    return plain


def check_stored(
    keys: KeySet, key: str, blob: bytes, otype: ObjectType, oid: bytes, max_size: int
) -> None:
    """Raise CorruptObjectError unless `blob` is intact: what a writer healing a reused
    object checks. In an encrypted repository that is the CRC and the AES-GCM tag, whose
    AAD binds the object id, type and flags: any change to a stored object after it was
    written fails one of them (a forgery needs the key), so the body is, byte for byte,
    what a key holder encoded for `oid`; inflating and re-hashing it as well (`decode`)
    proved nothing more and cost more CPU than the cipher (issue 18). The zstd frame's
    declared size is still bounded. Unencrypted objects have no tag: decoded in full."""
    if keys.enc_key is None:
        decode(keys, key, blob, otype, oid, True, max_size)
        return
    got_type, flags = check_crc(key, blob)
    if got_type != otype:
        raise CorruptObjectError(key, f"object type {got_type}, expected {int(otype)}")
    if not flags & FLAG_ENCRYPTED:
        raise CorruptObjectError(key, "unencrypted object in an encrypted repository")
    body = memoryview(blob)[HEADER.size :]
    aad = bytes([FORMAT_VERSION]) + oid + bytes([otype, flags])
    try:
        plain = AESGCM(keys.enc_key).decrypt(body[:NONCE_LEN], body[NONCE_LEN:], aad)
    except InvalidTag:
        raise CorruptObjectError(key, "authentication failed (tampered or damaged)") from None
    declared = zstandard.frame_content_size(plain) if flags & FLAG_ZSTD else len(plain)
    if declared > max_size:
        raise CorruptObjectError(key, f"declares {declared} bytes, larger than {max_size}")
