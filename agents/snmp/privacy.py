"""SNMPv3 keys and privacy: passphrase hashing and key localization (RFC 3414 A.2, RFC 7860 for SHA-2), the
AES key extensions (Blumenthal draft-blumenthal-aes-usm-04 and Reeder/Cisco draft-reeder-snmpv3-usm-3desede),
DES-CBC (RFC 3414 8) and AES-CFB128 (RFC 3826).

The hashes are the standard library's; the ciphers are cryptography's, which SSH and pysnmp load as well. This
replaced pysnmp's security services, whose pyasn1 types and service modules cost 2.4 MB of RSS and 71 modules
for a few hashes and one cipher call (docs/benchmarks.md, "Agent memory, every prober in use").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

Hash = Callable[..., Any]

HASHES: dict[str, Hash] = {
    "MD5": hashlib.md5, "SHA": hashlib.sha1, "SHA224": hashlib.sha224,
    "SHA256": hashlib.sha256, "SHA384": hashlib.sha384, "SHA512": hashlib.sha512,
}
_PASSPHRASE_BYTES = 1 << 20  # RFC 3414 A.2.1: the passphrase repeated to one megabyte


class PrivacyError(ValueError):
    """A response that cannot be decrypted: bad salt or length."""


def hash_passphrase(passphrase: bytes, digest: Hash) -> bytes:
    """The user's master key: one megabyte of the repeated passphrase, hashed in pieces that start on a repetition."""
    if not passphrase:
        raise ValueError("an empty passphrase has no key")
    piece = passphrase * 64
    hasher = digest()
    whole, rest = divmod(_PASSPHRASE_BYTES, len(piece))
    for _ in range(whole):
        hasher.update(piece)
    hasher.update(piece[:rest])
    return hasher.digest()


def localize(master: bytes, engine_id: bytes, digest: Hash) -> bytes:
    """The master key bound to one authoritative engine (RFC 3414 A.2.2)."""
    return digest(master + engine_id + master).digest()


@dataclass
class Cipher:
    """One privacy protocol: its key size, how a short localized key is extended, and its salt counter."""

    name: str
    key_size: int
    extension: str = ""  # "blumenthal", "reeder" or "" (DES and AES-128 need none)
    _counter: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big"))

    def localize(self, master: bytes, engine_id: bytes, digest: Hash) -> bytes:
        key = localize(master, engine_id, digest)
        while len(key) < self.key_size:
            if self.extension == "blumenthal":
                key += digest(key).digest()
            else:  # Reeder: the password-to-key steps again, on the key so far
                key += localize(hash_passphrase(key, digest), engine_id, digest)
        return key[: self.key_size]  # DES: 8 bytes of key, then 8 of pre-IV

    def encrypt(self, key: bytes, boots: int, engine_time: int, plain: bytes) -> tuple[bytes, bytes]:
        """(encrypted data, msgPrivacyParameters)."""
        if self.name == "DES":
            salt = boots.to_bytes(4, "big") + self._next_salt(4)
            padded = plain + b"\0" * (-len(plain) % 8)
            return _run(_des(key, salt).encryptor(), padded), salt
        salt = self._next_salt(8)
        return _run(_aes(key, boots, engine_time, salt).encryptor(), plain), salt

    def decrypt(self, key: bytes, boots: int, engine_time: int, salt: bytes, encrypted: bytes) -> bytes:
        if len(salt) != 8:
            raise PrivacyError(f"privacy parameters of {len(salt)} bytes, not 8")
        if self.name == "DES":
            if len(encrypted) % 8:
                raise PrivacyError("DES data is not a multiple of 8 bytes")
            return _run(_des(key, salt).decryptor(), encrypted)
        return _run(_aes(key, boots, engine_time, salt).decryptor(), encrypted)

    def _next_salt(self, size: int) -> bytes:
        self._counter = (self._counter + 1) % (1 << (8 * size))
        return self._counter.to_bytes(size, "big")


def cipher(protocol: str) -> Cipher:
    """The privacy protocol as net-snmp names it, dashes removed: DES, AES, AES192, AES256, AES192C, AES256C."""
    if protocol == "DES":
        return Cipher("DES", 16)
    if protocol == "AES":
        return Cipher("AES", 16)
    bits, reeder = int(protocol[3:6]), protocol.endswith("C")
    return Cipher(protocol, bits // 8, "reeder" if reeder else "blumenthal")


def _run(context: Any, data: bytes) -> bytes:
    return context.update(data) + context.finalize()


def _aes(key: bytes, boots: int, engine_time: int, salt: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher as Pipeline
    from cryptography.hazmat.primitives.ciphers import algorithms

    iv = boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + salt  # RFC 3826 3.1.2.1
    return Pipeline(algorithms.AES(key), _cfb(iv))


def _des(key: bytes, salt: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher as Pipeline
    from cryptography.hazmat.primitives.ciphers import modes

    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # cryptography < 43
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]
    iv = bytes(a ^ b for a, b in zip(key[8:16], salt))  # RFC 3414 8.1.1.1: pre-IV XOR salt
    return Pipeline(TripleDES(key[:8] * 3), modes.CBC(iv))  # triple DES with one key thrice is DES


def _cfb(iv: bytes) -> Any:
    try:
        from cryptography.hazmat.decrepit.ciphers.modes import CFB
    except ImportError:  # cryptography < 47
        from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[no-redef]
    return CFB(iv)


def load_ciphers() -> None:
    """Import the cipher modules now (a module's prepare), not inside the first poll."""
    _cfb(bytes(16))
    _des(bytes(16), bytes(8))
