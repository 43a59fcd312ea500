"""SNMPv3 keys and privacy: passphrase hashing and key localization (RFC 3414 A.2, RFC 7860 for SHA-2), the
AES key extensions (Blumenthal draft-blumenthal-aes-usm-04 and Reeder/Cisco draft-reeder-snmpv3-usm-3desede),
DES-CBC (RFC 3414 8) and AES-CFB128 (RFC 3826).

The hashes are the standard library's; the ciphers are OpenSSL's, from the libcrypto the ssl module has loaded
(cryptography's where that cannot be reached). This replaced pysnmp's security services, whose pyasn1 types and
service modules cost 2.4 MB of RSS and 71 modules for a few hashes and one cipher call, and which loaded
cryptography (7-8 MB more in an agent without SSH checks; docs/benchmarks.md, "Agent memory, every prober in use").
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
            salt = (boots & 0xFFFFFFFF).to_bytes(4, "big") + self._next_salt(4)
            padded = plain + b"\0" * (-len(plain) % 8)
            return _encrypt("des-cbc", *_des_key_iv(key, salt), padded), salt
        salt = self._next_salt(8)
        return _encrypt("aes-cfb", key, _aes_iv(boots, engine_time, salt), plain), salt

    def decrypt(self, key: bytes, boots: int, engine_time: int, salt: bytes, encrypted: bytes) -> bytes:
        if len(salt) != 8:
            raise PrivacyError(f"privacy parameters of {len(salt)} bytes, not 8")
        if self.name == "DES":
            if len(encrypted) % 8:
                raise PrivacyError("DES data is not a multiple of 8 bytes")
            return _decrypt("des-cbc", *_des_key_iv(key, salt), encrypted)
        return _decrypt("aes-cfb", key, _aes_iv(boots, engine_time, salt), encrypted)

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


def _encrypt(algorithm: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    return _engine().run(algorithm, key, iv, data, encrypt=True)


def _decrypt(algorithm: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    return _engine().run(algorithm, key, iv, data, encrypt=False)


class _LibCrypto:
    """OpenSSL's EVP ciphers through ctypes, from the libcrypto the ssl module has loaded already (0.4 MB for ctypes;
    cryptography's own OpenSSL build costs 7-8 MB of RSS where nothing else loads it, e.g. without SSH checks)."""

    _CIPHERS = {"aes-cfb": "EVP_aes_{bits}_cfb128", "des-cbc": "EVP_des_ede3_cbc"}

    def __init__(self) -> None:
        import _ssl
        import ctypes

        lib = ctypes.CDLL(_ssl.__file__)  # its dependency libcrypto answers the lookups
        self._ctypes = ctypes
        voidp, intp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
        lib.EVP_CIPHER_CTX_new.restype = voidp
        lib.EVP_CIPHER_CTX_new.argtypes = []
        lib.EVP_CIPHER_CTX_free.argtypes = [voidp]
        lib.EVP_CIPHER_CTX_free.restype = None
        lib.EVP_CipherInit_ex.argtypes = [voidp, voidp, voidp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        lib.EVP_CIPHER_CTX_set_padding.argtypes = [voidp, ctypes.c_int]
        lib.EVP_CipherUpdate.argtypes = [voidp, ctypes.c_char_p, intp, ctypes.c_char_p, ctypes.c_int]
        lib.EVP_CipherFinal_ex.argtypes = [voidp, ctypes.c_char_p, intp]
        self._lib = lib
        self._ciphers: dict[str, int] = {}
        for name in ("EVP_aes_128_cfb128", "EVP_aes_192_cfb128", "EVP_aes_256_cfb128", "EVP_des_ede3_cbc"):
            getter = getattr(lib, name)
            getter.restype, getter.argtypes = voidp, []
            self._ciphers[name] = getter()

    def run(self, algorithm: str, key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
        name = self._CIPHERS[algorithm].format(bits=len(key) * 8)
        ctypes, lib = self._ctypes, self._lib
        context = lib.EVP_CIPHER_CTX_new()
        if not context:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        try:
            if lib.EVP_CipherInit_ex(context, self._ciphers[name], None, key, iv, int(encrypt)) != 1:
                raise PrivacyError(f"{name}: the cipher did not accept the key")
            lib.EVP_CIPHER_CTX_set_padding(context, 0)  # DES data is padded to whole blocks by the caller
            out, written, final = ctypes.create_string_buffer(len(data) + 32), ctypes.c_int(0), ctypes.c_int(0)
            if lib.EVP_CipherUpdate(context, out, ctypes.byref(written), data, len(data)) != 1:
                raise PrivacyError(f"{name}: the cipher failed")
            tail = ctypes.create_string_buffer(32)
            if lib.EVP_CipherFinal_ex(context, tail, ctypes.byref(final)) != 1:
                raise PrivacyError(f"{name}: the data is not a whole number of blocks")
            return out.raw[: written.value] + tail.raw[: final.value]
        finally:
            lib.EVP_CIPHER_CTX_free(context)


class _Cryptography:
    """The same ciphers from cryptography, where the ssl module's libcrypto cannot be reached (a static build)."""

    def run(self, algorithm: str, key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
        from cryptography.hazmat.primitives.ciphers import Cipher as Pipeline
        from cryptography.hazmat.primitives.ciphers import algorithms, modes

        if algorithm == "aes-cfb":
            try:
                from cryptography.hazmat.decrepit.ciphers.modes import CFB
            except ImportError:  # cryptography < 47
                from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[no-redef]
            pipeline = Pipeline(algorithms.AES(key), CFB(iv))
        else:
            try:
                from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
            except ImportError:  # cryptography < 43
                from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]
            pipeline = Pipeline(TripleDES(key), modes.CBC(iv))
        context = pipeline.encryptor() if encrypt else pipeline.decryptor()
        return context.update(data) + context.finalize()


_ENGINES: list[Any] = []  # the one cipher engine of this process, made on first use


def _engine() -> Any:
    if not _ENGINES:
        try:
            _ENGINES.append(_LibCrypto())
        except (OSError, AttributeError):
            _ENGINES.append(_Cryptography())
    return _ENGINES[0]


def _aes_iv(boots: int, engine_time: int, salt: bytes) -> bytes:
    """RFC 3826 3.1.2.1; boots and time are 31-bit on the wire, masked as pysnmp did for a device that sends more."""
    return (boots & 0xFFFFFFFF).to_bytes(4, "big") + (engine_time & 0xFFFFFFFF).to_bytes(4, "big") + salt


def _des_key_iv(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """Triple DES with one key thrice is DES; the IV is the pre-IV XOR the salt (RFC 3414 8.1.1.1)."""
    return key[:8] * 3, bytes(a ^ b for a, b in zip(key[8:16], salt))


def load_ciphers() -> None:
    """Load the cipher engine now (a module's prepare), not inside the first poll."""
    _encrypt("aes-cfb", bytes(16), bytes(16), b"x")
