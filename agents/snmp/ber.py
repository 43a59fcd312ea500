"""The SNMP codec: BER of PDUs and of v1/v2c messages (v3 framing in agents.snmp.usm builds on it).

pysnmp decodes through pyasn1 at ~100 µs per varbind (measured here, docs/snmp.md); a poll of a 200-port
switch returns ~1,800 varbinds, so messages are coded here instead, where a varbind costs a few µs.
OIDs stay in their encoded form (the BER content octets): an instance OID of a column starts with the column's
encoding, so "is this varbind still in my column" is a bytes prefix test and the index is the remaining bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

SEQUENCE = 0x30

# PDU tags (context-specific, constructed)
GET = 0xA0
GETNEXT = 0xA1
RESPONSE = 0xA2
GETBULK = 0xA5
REPORT = 0xA8

# value tags
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
IP_ADDRESS = 0x40
COUNTER32 = 0x41
GAUGE32 = 0x42
TIMETICKS = 0x43
OPAQUE = 0x44
COUNTER64 = 0x46
UNSIGNED32 = 0x47
NO_SUCH_OBJECT = 0x80
NO_SUCH_INSTANCE = 0x81
END_OF_MIB_VIEW = 0x82

EXCEPTIONS = frozenset((NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW))
_UNSIGNED = frozenset((COUNTER32, GAUGE32, TIMETICKS, COUNTER64, UNSIGNED32))

VERSION_1 = 0
VERSION_2C = 1
VERSION_3 = 3

# error-status values (RFC 3416)
TOO_BIG = 1
NO_SUCH_NAME = 2

Value = int | bytes | str | None


class DecodeError(ValueError):
    """The bytes are not an SNMP response this codec understands."""


class Varbind(NamedTuple):  # a tuple: a poll decodes thousands of them
    oid: bytes  # encoded OID content octets
    tag: int
    value: Value  # int for numbers, bytes for strings, dotted str for OIDs and IpAddress, None otherwise


@dataclass(frozen=True, slots=True)
class Response:
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[Varbind]


def encode_oid(dotted: str) -> bytes:
    """Content octets of an OID given as '1.3.6.1...'."""
    arcs = [int(part) for part in dotted.strip(".").split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"invalid OID {dotted!r}")
    return b"".join(_base128(arc) for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]])


def _base128(number: int) -> bytes:
    if number < 0x80:
        return bytes((number,))
    out = [number & 0x7F]
    number >>= 7
    while number:
        out.append(0x80 | (number & 0x7F))
        number >>= 7
    return bytes(reversed(out))


def decode_subids(content: bytes) -> tuple[int, ...]:
    """Sub-identifiers of encoded OID content, as they are on the wire (the first two arcs still combined)."""
    out: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            out.append(value)
            value = 0
    return tuple(out)


def decode_oid(content: bytes) -> str:
    subids = decode_subids(content)
    if not subids:
        return ""
    first = subids[0]
    head = (min(first // 40, 2), first - 40 * min(first // 40, 2))
    return ".".join(map(str, head + subids[1:]))


def _length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def integer(value: int) -> bytes:
    return tlv(INTEGER, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def encode_pdu(pdu: int, request_id: int, oids: list[bytes], non_repeaters: int = 0, max_repetitions: int = 0) -> bytes:
    """A GET, GETNEXT or GETBULK PDU; for GETBULK the two error fields carry the bulk parameters."""
    varbinds = b"".join(tlv(SEQUENCE, tlv(OBJECT_IDENTIFIER, oid) + b"\x05\x00") for oid in oids)
    return tlv(pdu, integer(request_id) + integer(non_repeaters) + integer(max_repetitions) + tlv(SEQUENCE, varbinds))


def encode_request(version: int, community: bytes, pdu: int, request_id: int, oids: list[bytes],
                   non_repeaters: int = 0, max_repetitions: int = 0) -> bytes:
    """A v1/v2c message of one request PDU."""
    body = encode_pdu(pdu, request_id, oids, non_repeaters, max_repetitions)
    return tlv(SEQUENCE, integer(version) + tlv(OCTET_STRING, community) + body)


def header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at pos."""
    try:
        tag = data[pos]
        length = data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if not 0 < count <= 4:  # 0: the indefinite form, which SNMP forbids (RFC 3417 8); over 4: no UDP datagram is that long
                raise DecodeError(f"a length of {count} octets" if count else "an indefinite length (SNMP allows definite lengths only)")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
    except IndexError:
        raise DecodeError("truncated message") from None
    end = pos + length
    if end > len(data):
        raise DecodeError("a length runs past the end of the message")
    return tag, pos, end


def expect(data: bytes, pos: int, tag: int, what: str) -> tuple[int, int]:
    """(content start, content end) of the TLV at pos, which must have this tag."""
    found, start, end = header(data, pos)
    if found != tag:
        raise DecodeError(f"expected {what} (tag 0x{tag:02x}), found tag 0x{found:02x}")
    return start, end


def read_integer(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """(value, end) of the INTEGER at pos."""
    start, end = expect(data, pos, INTEGER, what)
    return int.from_bytes(data[start:end], "big", signed=True), end


def read_octets(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """(value, end) of the OCTET STRING at pos."""
    start, end = expect(data, pos, OCTET_STRING, what)
    return data[start:end], end


def decode_pdu(data: bytes, pos: int) -> tuple[int, Response]:
    """(PDU tag, content) of the PDU at pos: a Response, or for v3 also a Report."""
    tag, start, _ = header(data, pos)
    if tag not in (RESPONSE, REPORT):
        raise DecodeError(f"expected a Response PDU, found tag 0x{tag:02x}")
    request_id, pos = read_integer(data, start, "request-id")
    error_status, pos = read_integer(data, pos, "error-status")
    error_index, pos = read_integer(data, pos, "error-index")
    start, end = expect(data, pos, SEQUENCE, "varbind list")
    return tag, Response(request_id, error_status, error_index, _varbinds(data, start, end))


def decode_response(data: bytes) -> tuple[int, bytes, Response]:
    """(version, community, response) of a v1/v2c Response message."""
    start, _ = expect(data, 0, SEQUENCE, "message")
    version, pos = read_integer(data, start, "version")
    community, pos = read_octets(data, pos, "community")
    tag, response = decode_pdu(data, pos)
    if tag != RESPONSE:
        raise DecodeError("a v1/v2c message with a Report PDU")
    return version, community, response


def _varbinds(data: bytes, pos: int, end: int) -> list[Varbind]:
    """The hot loop of a poll: short-form lengths (all of a usual varbind) are read inline."""
    out = []
    append = out.append
    try:
        while pos < end:
            if data[pos] != 0x30:
                raise DecodeError(f"expected a varbind (tag 0x30), found tag 0x{data[pos]:02x}")
            length = data[pos + 1]
            if length < 0x80:
                pos, next_pos = pos + 2, pos + 2 + length
            else:
                _, pos, next_pos = header(data, pos)
            if data[pos] != OBJECT_IDENTIFIER:
                raise DecodeError(f"expected an OID in a varbind, found tag 0x{data[pos]:02x}")
            length = data[pos + 1]
            if length < 0x80:
                start, pos = pos + 2, pos + 2 + length
            else:
                _, start, pos = header(data, pos)
            oid = data[start:pos]
            tag, length = data[pos], data[pos + 1]
            if length < 0x80:
                start, pos = pos + 2, pos + 2 + length
            else:
                tag, start, pos = header(data, pos)
            if pos != next_pos or pos > end:
                raise DecodeError("a varbind's length does not match its content")
            append(Varbind(oid, tag, _value(tag, data[start:pos])))
    except IndexError:
        raise DecodeError("truncated varbind list") from None
    return out


def _value(tag: int, content: bytes) -> Value:
    if tag in _UNSIGNED:
        return int.from_bytes(content, "big")
    if tag == OCTET_STRING or tag == OPAQUE:
        return content
    if tag == INTEGER:
        return int.from_bytes(content, "big", signed=True)
    if tag == OBJECT_IDENTIFIER:
        return decode_oid(content)
    if tag == IP_ADDRESS:
        if len(content) != 4:
            raise DecodeError("an IpAddress must be 4 octets")
        return ".".join(map(str, content))
    if tag == NULL or tag in EXCEPTIONS:
        return None
    raise DecodeError(f"unknown value tag 0x{tag:02x}")
