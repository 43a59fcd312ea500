"""The few fields of an X.509 certificate the TLS metrics report, read from its DER bytes.

Expiry, subject and issuer (as cryptography's `rfc4514_string` writes them), subject alternative names and the
serial number. cryptography's x509 package cost 9 MB of RSS in an agent whose TLS probes needed only these
fields (its Rust extension alone is 7 MB, docs/benchmarks.md); tests/test_x509fields.py checks every field
against cryptography's reading of the same certificates.
"""

from __future__ import annotations

import calendar
import ipaddress
from dataclasses import dataclass

SEQUENCE, SET, INTEGER, OID, BIT_STRING = 0x30, 0x31, 0x02, 0x06, 0x03
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
_VERSION, _EXTENSIONS = 0xA0, 0xA3  # [0] and [3] EXPLICIT in TBSCertificate
_DNS_NAME, _IP_ADDRESS = 0x82, 0x87  # GeneralName [2] and [7], IMPLICIT
_SUBJECT_ALT_NAME = "2.5.29.17"
_SHORT_NAMES = {  # cryptography's _NAMEOID_TO_NAME; other attributes are written as their dotted OID
    "2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
    "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
}
_TEXT_CODECS = {0x1E: "utf-16-be", 0x1C: "utf-32-be"}  # BMPString, UniversalString; the other string types: UTF-8


@dataclass(frozen=True, slots=True)
class CertificateFields:
    not_after: float  # Unix time
    subject: str
    issuer: str
    alt_names: str  # DNS names, then IP addresses, comma-separated
    serial_hex: str


def read_certificate(der: bytes) -> CertificateFields:
    """The fields of one DER certificate; ValueError if it is not one."""
    try:
        return _read(der)
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a DER certificate: {exc}") from None


def _read(der: bytes) -> CertificateFields:
    certificate, _ = _expect(der, 0, SEQUENCE)
    tbs, _ = _expect(der, certificate[0], SEQUENCE)
    pos = tbs[0]
    if der[pos] == _VERSION:
        pos = _tlv(der, pos)[3]
    serial, pos = _expect(der, pos, INTEGER)
    pos = _expect(der, pos, SEQUENCE)[1]  # signature algorithm
    issuer, pos = _expect(der, pos, SEQUENCE)
    validity, pos = _expect(der, pos, SEQUENCE)
    subject, pos = _expect(der, pos, SEQUENCE)
    pos = _expect(der, pos, SEQUENCE)[1]  # subject public key info
    alt_names = ""
    while pos < tbs[1]:
        tag, start, end, pos = _tlv(der, pos)
        if tag == _EXTENSIONS:
            alt_names = _alt_names(der, start)
    not_after_pos = _tlv(der, validity[0])[3]
    return CertificateFields(
        not_after=_time(der, not_after_pos),
        subject=_name(der, subject),
        issuer=_name(der, issuer),
        alt_names=alt_names,
        serial_hex=format(int.from_bytes(der[serial[0]:serial[1]], "big", signed=True), "x"),
    )


def _tlv(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """(tag, content start, content end, next position) of the element at pos."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError(f"unsupported DER length of {size} bytes")
        length = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("DER element runs past its end")
    return tag, pos, pos + length, pos + length


def _expect(data: bytes, pos: int, wanted: int) -> tuple[tuple[int, int], int]:
    tag, start, end, after = _tlv(data, pos)
    if tag != wanted:
        raise ValueError(f"expected DER tag {wanted:#x} at {pos}, found {tag:#x}")
    return (start, end), after


def _children(data: bytes, span: tuple[int, int]) -> list[tuple[int, int, int]]:
    out, pos = [], span[0]
    while pos < span[1]:
        tag, start, end, pos = _tlv(data, pos)
        out.append((tag, start, end))
    return out


def _oid(raw: bytes) -> str:
    arcs, value = [], 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _time(data: bytes, pos: int) -> float:
    tag, start, end, _ = _tlv(data, pos)
    text = data[start:end].decode("ascii").rstrip("Z")
    if tag == UTC_TIME:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != GENERALIZED_TIME:
        raise ValueError(f"expected a UTCTime or GeneralizedTime, found tag {tag:#x}")
    fields = (int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]), int(text[12:14]))
    return float(calendar.timegm(fields))


def _name(data: bytes, span: tuple[int, int]) -> str:
    """RFC 4514, as cryptography writes it: the RDNs last first, attributes of one RDN joined by '+'."""
    rdns = []
    for _, start, end in _children(data, span):
        attributes = []
        for _, a_start, a_end in _children(data, (start, end)):
            (oid_tag, o_start, o_end), (value_tag, v_start, v_end) = _children(data, (a_start, a_end))[:2]
            dotted = _oid(data[o_start:o_end])
            attributes.append(f"{_SHORT_NAMES.get(dotted, dotted)}={_escape(_value(value_tag, data[v_start:v_end]))}")
        rdns.append("+".join(attributes))
    return ",".join(reversed(rdns))


def _value(tag: int, raw: bytes) -> str | bytes:
    if tag == BIT_STRING:
        return raw  # as cryptography gives it: the unused-bits byte included
    return raw.decode(_TEXT_CODECS.get(tag, "utf-8"))


def _escape(value: str | bytes) -> str:
    """cryptography's _escape_dn_value."""
    if not value:
        return ""
    if isinstance(value, bytes):
        return "#" + value.hex()
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("+", "\\+"), (",", "\\,"), (";", "\\;"), ("<", "\\<"),
                          (">", "\\>"), ("\0", "\\00")):
        value = value.replace(char, escaped)
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def _alt_names(data: bytes, pos: int) -> str:
    extensions, _ = _expect(data, pos, SEQUENCE)
    for _, start, end in _children(data, extensions):
        parts = _children(data, (start, end))
        if parts[0][0] == OID and _oid(data[parts[0][1]:parts[0][2]]) == _SUBJECT_ALT_NAME:
            _, v_start, v_end = parts[-1]  # extnValue OCTET STRING holding GeneralNames
            names = _children(data, _expect(data, v_start, SEQUENCE)[0])
            dns = [data[s:e].decode("ascii") for tag, s, e in names if tag == _DNS_NAME]
            ips = [str(ipaddress.ip_address(data[s:e])) for tag, s, e in names if tag == _IP_ADDRESS and e - s in (4, 16)]
            return ",".join(dns + ips)
    return ""
