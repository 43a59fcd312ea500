"""SNMPv3 messages with the User-based Security Model (RFC 3412, 3414, 3826, 7860) on our BER codec.

Passphrase hashing, key localization and the privacy ciphers are in agents/snmp/privacy.py (checked against
pysnmp's in tests/test_snmp_privacy.py). The framing is ours, as for v1/v2c: pysnmp's whole-message path decodes every varbind through pyasn1
(~180 µs each here), so a v3 poll of a 200-port switch cost 250-500 ms of CPU; framed here it costs about what
a v2c poll does (docs/benchmarks.md). Authentication is the standard library's HMAC, at the digest's known place.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from agents.results import Failure
from agents.snmp import ber, privacy
from agents.snmp.failures import SnmpFailure
from agents.snmp.schema import SnmpAuth

MAX_MESSAGE_SIZE = 65507  # the largest UDP payload: let the agent answer as much as it likes
USM_SECURITY_MODEL = 3
FLAG_AUTH, FLAG_PRIV, FLAG_REPORTABLE = 0x01, 0x02, 0x04
SECURITY_FLAGS = FLAG_AUTH | FLAG_PRIV

_USM_STATS = "1.3.6.1.6.3.15.1.1"
UNKNOWN_ENGINE_ID = ber.encode_oid(f"{_USM_STATS}.4.0")
NOT_IN_TIME_WINDOW = ber.encode_oid(f"{_USM_STATS}.2.0")
REPORTED_FAILURES = {
    ber.encode_oid(f"{_USM_STATS}.1.0"): (
        Failure.AUTH_FAILED, "the agent does not accept this security level for the user (usmStatsUnsupportedSecLevels)"),
    NOT_IN_TIME_WINDOW: (
        SnmpFailure.SNMP_NOT_IN_TIME_WINDOW, "the request stayed outside the agent's time window (usmStatsNotInTimeWindows)"),
    ber.encode_oid(f"{_USM_STATS}.3.0"): (
        SnmpFailure.SNMP_UNKNOWN_USER, "the agent does not know this user (usmStatsUnknownUserNames)"),
    UNKNOWN_ENGINE_ID: (Failure.PROTOCOL_ERROR, "the agent did not accept its own engine ID (usmStatsUnknownEngineIDs)"),
    ber.encode_oid(f"{_USM_STATS}.5.0"): (
        Failure.AUTH_FAILED, "the agent rejected the authentication key (usmStatsWrongDigests): wrong auth password or protocol"),
    ber.encode_oid(f"{_USM_STATS}.6.0"): (
        Failure.AUTH_FAILED, "the agent could not decrypt the request (usmStatsDecryptionErrors): wrong privacy password or protocol"),
}

# auth protocol -> the digest's length in the message; RFC 3414 (MD5, SHA) and RFC 7860 (SHA-2)
_DIGEST_LENGTHS = {"MD5": 12, "SHA": 12, "SHA224": 16, "SHA256": 24, "SHA384": 32, "SHA512": 48}


class AuthenticationError(Exception):
    """A response whose digest does not match: not from the agent, or keys differ."""


@dataclass(slots=True)
class Engine:
    """What a device's authoritative SNMP engine told us: its ID, boots and time (RFC 3414 2.3)."""

    id: bytes = b""
    boots: int = 0
    time: int = 0
    synced_at: float = 0.0  # monotonic

    def now(self) -> int:
        return self.time + int(time.monotonic() - self.synced_at)

    def sync(self, boots: int, engine_time: int) -> None:
        self.boots, self.time, self.synced_at = boots, engine_time, time.monotonic()


@dataclass(frozen=True, slots=True)
class Incoming:
    """A parsed, authenticated and decrypted v3 message."""

    message_id: int
    engine_id: bytes
    boots: int
    time: int
    level: int  # FLAG_AUTH | FLAG_PRIV as the message was protected
    pdu_tag: int
    response: ber.Response


class UsmUser:
    """One v3 user: passphrases hashed once (a 1 MB hash each), keys localized once per engine ID."""

    def __init__(self, auth: SnmpAuth) -> None:
        self.name = (auth.username or "").encode()
        self.context_name = auth.context_name.encode()
        self.flags = FLAG_REPORTABLE
        protocol = auth.auth_protocol.replace("-", "")
        self._hash, self.digest_length = privacy.HASHES[protocol], _DIGEST_LENGTHS[protocol]
        self._cipher = privacy.cipher(auth.priv_protocol.replace("-", ""))
        self._master_auth = self._master_priv = b""
        if auth.security_level != "noAuthNoPriv":
            self.flags |= FLAG_AUTH
            self._master_auth = privacy.hash_passphrase(auth.auth_secret.reveal().encode(), self._hash)
        if auth.security_level == "authPriv":
            self.flags |= FLAG_PRIV
            self._master_priv = privacy.hash_passphrase(auth.priv_secret.reveal().encode(), self._hash)
        self._localized: dict[bytes, tuple[bytes, bytes]] = {}

    def keys(self, engine_id: bytes) -> tuple[bytes, bytes]:
        """(auth key, priv key) localized to one engine."""
        keys = self._localized.get(engine_id)
        if keys is None:
            auth_key = privacy.localize(self._master_auth, engine_id, self._hash) if self._master_auth else b""
            priv_key = self._cipher.localize(self._master_priv, engine_id, self._hash) if self._master_priv else b""
            keys = self._localized[engine_id] = (auth_key, priv_key)
        return keys

    def digest(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()[: self.digest_length]

    def encrypt(self, key: bytes, engine: Engine, engine_time: int, plain: bytes) -> tuple[bytes, bytes]:
        return self._cipher.encrypt(key, engine.boots, engine_time, plain)

    def decrypt(self, key: bytes, boots: int, engine_time: int, salt: bytes, encrypted: bytes) -> bytes:
        try:
            return self._cipher.decrypt(key, boots, engine_time, salt, encrypted)
        except (privacy.PrivacyError, ValueError) as exc:
            raise ber.DecodeError(f"cannot decrypt the response: {exc}") from None


def discovery_message(message_id: int, request_id: int) -> bytes:
    """An unauthenticated, empty GET that makes the agent report its engine ID, boots and time (RFC 3414 4)."""
    security = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, b"") + ber.integer(0) + ber.integer(0)
                       + ber.tlv(ber.OCTET_STRING, b"") * 3)
    scoped = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, b"") * 2 + ber.encode_pdu(ber.GET, request_id, []))
    return _message(message_id, FLAG_REPORTABLE, security, scoped)


def _message(message_id: int, flags: int, security: bytes, data: bytes) -> bytes:
    global_data = ber.tlv(ber.SEQUENCE, ber.integer(message_id) + ber.integer(MAX_MESSAGE_SIZE)
                          + ber.tlv(ber.OCTET_STRING, bytes((flags,))) + ber.integer(USM_SECURITY_MODEL))
    return ber.tlv(ber.SEQUENCE, ber.integer(ber.VERSION_3) + global_data + ber.tlv(ber.OCTET_STRING, security) + data)


def request_message(user: UsmUser, engine: Engine, message_id: int, pdu: bytes) -> bytes:
    """A request PDU in a v3 message of the user's security level, encrypted and signed as it requires."""
    auth_key, priv_key = user.keys(engine.id)
    engine_time = engine.now()
    scoped = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, engine.id) + ber.tlv(ber.OCTET_STRING, user.context_name) + pdu)
    salt = b""
    if user.flags & FLAG_PRIV:
        encrypted, salt = user.encrypt(priv_key, engine, engine_time, scoped)
        scoped = ber.tlv(ber.OCTET_STRING, encrypted)
    placeholder = b"\0" * user.digest_length if user.flags & FLAG_AUTH else b""
    before_digest = (ber.tlv(ber.OCTET_STRING, engine.id) + ber.integer(engine.boots) + ber.integer(engine_time)
                     + ber.tlv(ber.OCTET_STRING, user.name))
    security = ber.tlv(ber.SEQUENCE, before_digest + ber.tlv(ber.OCTET_STRING, placeholder) + ber.tlv(ber.OCTET_STRING, salt))
    message = _message(message_id, user.flags, security, scoped)
    if not user.flags & FLAG_AUTH:
        return message
    # the digest's place: the message ends with the security parameters' tail (digest, salt) and the data
    offset = len(message) - len(scoped) - len(ber.tlv(ber.OCTET_STRING, salt)) - len(placeholder)
    return message[:offset] + user.digest(auth_key, message) + message[offset + len(placeholder):]


def read_message(data: bytes, user: UsmUser) -> Incoming:
    """Parse, authenticate (if the message says it is) and decrypt a v3 response or report."""
    start, _ = ber.expect(data, 0, ber.SEQUENCE, "message")
    version, pos = ber.read_integer(data, start, "msgVersion")
    if version != ber.VERSION_3:
        raise ber.DecodeError(f"expected an SNMPv3 message, found version {version}")
    start, pos = ber.expect(data, pos, ber.SEQUENCE, "msgGlobalData")
    message_id, cursor = ber.read_integer(data, start, "msgID")
    _, cursor = ber.read_integer(data, cursor, "msgMaxSize")
    flags, _ = ber.read_octets(data, cursor, "msgFlags")
    start, pos = ber.expect(data, pos, ber.OCTET_STRING, "msgSecurityParameters")
    start, _ = ber.expect(data, start, ber.SEQUENCE, "UsmSecurityParameters")
    engine_id, cursor = ber.read_octets(data, start, "msgAuthoritativeEngineID")
    boots, cursor = ber.read_integer(data, cursor, "msgAuthoritativeEngineBoots")
    engine_time, cursor = ber.read_integer(data, cursor, "msgAuthoritativeEngineTime")
    _, cursor = ber.read_octets(data, cursor, "msgUserName")
    digest_start, digest_end = ber.expect(data, cursor, ber.OCTET_STRING, "msgAuthenticationParameters")
    salt, _ = ber.read_octets(data, digest_end, "msgPrivacyParameters")
    level = (flags[0] if flags else 0) & SECURITY_FLAGS
    if level & ~user.flags or level == FLAG_PRIV:  # more than the user can check, or privacy without auth
        raise AuthenticationError()
    auth_key, priv_key = user.keys(engine_id) if level else (b"", None)
    if level & FLAG_AUTH:
        digest = data[digest_start:digest_end]
        expected = user.digest(auth_key, data[:digest_start] + b"\0" * len(digest) + data[digest_end:])
        if not hmac.compare_digest(digest, expected):
            raise AuthenticationError()
    if level & FLAG_PRIV:
        encrypted, _ = ber.read_octets(data, pos, "encryptedPDU")
        data, pos = user.decrypt(priv_key, boots, engine_time, salt, encrypted), 0
    start, _ = ber.expect(data, pos, ber.SEQUENCE, "ScopedPDU")
    _, cursor = ber.read_octets(data, start, "contextEngineID")
    _, cursor = ber.read_octets(data, cursor, "contextName")
    tag, response = ber.decode_pdu(data, cursor)
    if tag == ber.RESPONSE and level != user.flags & SECURITY_FLAGS:
        raise AuthenticationError()  # a response comes at the request's security level; only reports may not
    return Incoming(message_id, engine_id, boots, engine_time, level, tag, response)


@dataclass(slots=True)
class UsmPeer:
    """A device's v3 state kept between polls: the user's keys and what its engine told us."""

    user: UsmUser
    engine: Engine = field(default_factory=Engine)
