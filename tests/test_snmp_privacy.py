"""SNMPv3 keys and ciphers of agents/snmp/privacy.py: the RFC's test vectors, and the same keys and ciphertexts as
pysnmp's security services (which the agent used before, and which tests/test_snmp.py proves against net-snmp's
snmpd for every protocol pair)."""

from __future__ import annotations

import itertools

import pytest

from agents.snmp import privacy

ENGINE_ID = bytes.fromhex("000000000000000000000002")  # RFC 3414 A.3
AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("DES", "AES", "AES192", "AES256", "AES192C", "AES256C")


@pytest.mark.parametrize(
    ("protocol", "key"),
    [("MD5", "526f5eed9fcce26f8964c2930787d82b"), ("SHA", "6695febc9288e36282235fc7151f128497b38f3f")],
)
def test_the_localized_keys_of_rfc_3414_appendix_a3(protocol, key):
    digest = privacy.HASHES[protocol]
    assert privacy.localize(privacy.hash_passphrase(b"maplesyrup", digest), ENGINE_ID, digest).hex() == key


def _pysnmp_services():
    import pysnmp.proto.secmod.rfc3414  # noqa: F401 - it imports the service modules in an order that works
    from pysnmp.proto.secmod.eso.priv import aes192, aes256
    from pysnmp.proto.secmod.rfc3414.auth import hmacmd5, hmacsha
    from pysnmp.proto.secmod.rfc3414.priv import des
    from pysnmp.proto.secmod.rfc3826.priv import aes
    from pysnmp.proto.secmod.rfc7860.auth import hmacsha2

    sha2 = hmacsha2.HmacSha2
    auth = {
        "MD5": hmacmd5.HmacMd5.SERVICE_ID, "SHA": hmacsha.HmacSha.SERVICE_ID, "SHA224": sha2.SHA224_SERVICE_ID,
        "SHA256": sha2.SHA256_SERVICE_ID, "SHA384": sha2.SAH384_SERVICE_ID, "SHA512": sha2.SHA512_SERVICE_ID,
    }
    priv = {
        "DES": des.Des, "AES": aes.Aes, "AES192": aes192.AesBlumenthal192, "AES256": aes256.AesBlumenthal256,
        "AES192C": aes192.Aes192, "AES256C": aes256.Aes256,
    }
    return auth, priv


@pytest.mark.parametrize(("auth", "priv"), list(itertools.product(AUTH_PROTOCOLS, PRIV_PROTOCOLS)))
def test_privacy_keys_and_ciphertexts_are_pysnmps(auth, priv):
    from pyasn1.type.univ import OctetString

    auth_oids, priv_services = _pysnmp_services()
    service = priv_services[priv]()
    digest = privacy.HASHES[auth]
    master = privacy.hash_passphrase(b"privpass123", digest)
    assert master == bytes(service.hash_passphrase(auth_oids[auth], OctetString(b"privpass123")))
    ours = privacy.cipher(priv)
    key = ours.localize(master, ENGINE_ID, digest)
    assert key == bytes(service.localize_key(auth_oids[auth], OctetString(master), OctetString(ENGINE_ID)))
    plain = b"\x30\x0e" + bytes(range(14)) + b"scoped PDU bytes"
    encrypted, salt = ours.encrypt(key, 7, 12345, plain)
    theirs = bytes(service.decrypt_data(OctetString(key), (7, 12345, OctetString(salt)), OctetString(encrypted)))
    assert theirs[: len(plain)] == plain
    assert ours.decrypt(key, 7, 12345, salt, encrypted)[: len(plain)] == plain


def test_each_message_gets_a_new_salt():
    cipher = privacy.cipher("AES")
    salts = {cipher.encrypt(bytes(16), 1, 1, b"x")[1] for _ in range(3)}
    assert len(salts) == 3


def test_a_salt_of_the_wrong_length_is_a_privacy_error():
    with pytest.raises(privacy.PrivacyError):
        privacy.cipher("AES").decrypt(bytes(16), 1, 1, b"short", b"data")


@pytest.mark.parametrize(("algorithm", "key", "size"), [("aes-cfb", bytes(range(16)), 33), ("aes-cfb", bytes(range(32)), 5),
                                                       ("des-cbc", bytes(range(24)), 32)])
def test_openssl_through_ctypes_and_cryptography_agree(algorithm, key, size):
    data, iv = bytes(range(size)), bytes(range(100, 116))[: 16 if algorithm == "aes-cfb" else 8]
    libcrypto, fallback = privacy._LibCrypto(), privacy._Cryptography()
    encrypted = libcrypto.run(algorithm, key, iv, data, encrypt=True)
    assert encrypted == fallback.run(algorithm, key, iv, data, encrypt=True)
    assert libcrypto.run(algorithm, key, iv, encrypted, encrypt=False) == data


def test_snmp_privacy_loads_no_cryptography():
    """cryptography's OpenSSL build is 7-8 MB of RSS; the ssl module's libcrypto is loaded already."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom agents.snmp import privacy\nprivacy.load_ciphers()\n"
        "c = privacy.cipher('AES256C')\nkey = c.localize(privacy.hash_passphrase(b'p' * 8, privacy.HASHES['SHA']), b'e', privacy.HASHES['SHA'])\n"
        "print(type(privacy._engine()).__name__, 'cryptography' in sys.modules, c.decrypt(key, 1, 2, *c.encrypt(key, 1, 2, b'abc')[::-1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["_LibCrypto", "False", "b'abc'"], out
