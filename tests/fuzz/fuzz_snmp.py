"""SNMP replies (agents/snmp/ber.py, usm.py): only DecodeError / AuthenticationError escape; where both our codec
and pyasn1 (pysnmp's BER reader) read a v1/v2c response, they read the same request id, error fields, OIDs, tags
and values."""

from __future__ import annotations

from pyasn1.codec.ber import decoder as pyasn1_decoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import api

from agents.snmp import ber, usm
from agents.snmp.schema import SnmpAuth
from foundation.config.types import SecretRef

_USERS: list[usm.UsmUser] = []


def _users() -> list[usm.UsmUser]:
    if not _USERS:
        _USERS.append(usm.UsmUser(SnmpAuth(version=3, username="fuzz", security_level="noAuthNoPriv")))
        _USERS.append(usm.UsmUser(SnmpAuth(
            version=3, username="fuzz", auth_password=SecretRef("authpass123", "fuzz"), priv_password=SecretRef("privpass123", "fuzz"),
        )))
    return _USERS


def check(data: bytes) -> None:
    try:
        _, _, ours = ber.decode_response(data)
    except ber.DecodeError:
        ours = None
    if ours is not None:
        _agree_with_pyasn1(data, ours)
    for user in _users():
        try:
            usm.read_message(data, user)
        except (ber.DecodeError, usm.AuthenticationError):
            pass


def _agree_with_pyasn1(data: bytes, ours: ber.Response) -> None:
    try:
        message, _ = pyasn1_decoder.decode(data, asn1Spec=api.v2c.Message())
        if message["data"].getName() != "response":
            return
        pdu = api.v2c.apiMessage.get_pdu(message)
        theirs = (int(pdu["request-id"]), int(pdu["error-status"]), int(pdu["error-index"]),
                  [(str(oid), _plain(value)) for oid, value in api.v2c.apiPDU.get_varbinds(pdu)])
    except (PyAsn1Error, ValueError, TypeError):
        return  # pyasn1 refuses it: our reading is not compared (we are more lenient in places, see docs/fuzzing.md)
    mine = (ours.request_id, ours.error_status, ours.error_index,
            [(ber.decode_oid(vb.oid), (vb.tag, vb.value)) for vb in ours.varbinds])
    assert mine == theirs, f"our codec read {mine!r}, pyasn1 read {theirs!r}"


def _plain(value) -> tuple[int, object]:
    """(tag byte, value) of a pyasn1 varbind value, in our codec's terms."""
    tag = value.tagSet[-1]
    tag_byte = tag.tagClass | tag.tagFormat | tag.tagId
    if tag_byte in ber.EXCEPTIONS or tag_byte == ber.NULL:
        return tag_byte, None
    if tag_byte == ber.OBJECT_IDENTIFIER:
        return tag_byte, str(value)
    if tag_byte == ber.IP_ADDRESS:
        return tag_byte, ".".join(map(str, value.asOctets()))
    if tag_byte in (ber.OCTET_STRING, ber.OPAQUE):
        return tag_byte, value.asOctets()
    return tag_byte, int(value)


def _pdu(request_id: int, varbinds: bytes) -> bytes:
    return ber.tlv(ber.RESPONSE, ber.integer(request_id) + ber.integer(0) + ber.integer(0) + ber.tlv(ber.SEQUENCE, varbinds))


def _response(version: int, request_id: int, varbinds: bytes) -> bytes:
    return ber.tlv(ber.SEQUENCE, ber.integer(version) + ber.tlv(ber.OCTET_STRING, b"public") + _pdu(request_id, varbinds))


def _varbind(oid: str, tag: int, content: bytes) -> bytes:
    return ber.tlv(ber.SEQUENCE, ber.tlv(ber.OBJECT_IDENTIFIER, ber.encode_oid(oid)) + ber.tlv(tag, content))


def seeds() -> list[bytes]:
    values = [
        (ber.INTEGER, b"\xff"), (ber.OCTET_STRING, b"eth0"), (ber.OBJECT_IDENTIFIER, ber.encode_oid("1.3.6.1.4.1.8072")),
        (ber.IP_ADDRESS, b"\x7f\x00\x00\x01"), (ber.COUNTER32, b"\x00\xff\xff\xff\xff"), (ber.GAUGE32, b"\x01"),
        (ber.TIMETICKS, b"\x10\x00"), (ber.COUNTER64, b"\x01" * 8), (ber.NULL, b""), (ber.NO_SUCH_OBJECT, b""),
        (ber.END_OF_MIB_VIEW, b""), (ber.OPAQUE, b"\x9f\x78\x04\x3f\x80\x00\x00"),
    ]
    varbinds = b"".join(_varbind(f"1.3.6.1.2.1.2.2.1.{index}.1", tag, content) for index, (tag, content) in enumerate(values, 1))
    v2c = _response(ber.VERSION_2C, 1234, varbinds)
    scoped = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, b"\x80\x00\x1f\x88\x04") + ber.tlv(ber.OCTET_STRING, b"") + _pdu(5, varbinds))
    security = ber.tlv(ber.SEQUENCE, ber.tlv(ber.OCTET_STRING, b"\x80\x00\x1f\x88\x04") + ber.integer(3) + ber.integer(1000)
                       + ber.tlv(ber.OCTET_STRING, b"fuzz") + ber.tlv(ber.OCTET_STRING, b"") + ber.tlv(ber.OCTET_STRING, b""))
    v3 = usm._message(7, 0, security, scoped)
    return [v2c, _response(ber.VERSION_1, 1, varbinds[:40]), v3, usm.discovery_message(1, 2)]
