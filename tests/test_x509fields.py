"""The certificate fields the TLS metrics report (agents/probes/x509fields.py) are cryptography's reading of the
same DER bytes: expiry, subject and issuer as RFC 4514 strings, alternative names and serial number."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agents.probes.x509fields import read_certificate

KEY = ec.generate_private_key(ec.SECP256R1())
NAMES = {
    "plain": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.tinh.gov.vn")]),
    "several": x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Tiền Giang"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sở Thông tin và Truyền thông"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IT, \"center\" + <ops>; #1 "),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "gov"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "admin@tinh.gov.vn"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "#0042", x509.name._ASN1Type.UTF8String),
        x509.NameAttribute(NameOID.COMMON_NAME, " leading space"),
    ]),
    "multi-valued": x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.USER_ID, "b"),
    ])]),
    "bmp": x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ủy ban", x509.name._ASN1Type.BMPString)]),
    "unique id": x509.Name([x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, b"\x01\x02", x509.name._ASN1Type.BitString)]),
}
ALT_NAMES = [
    x509.DNSName("mail.tinh.gov.vn"), x509.IPAddress(ipaddress.ip_address("10.0.0.1")), x509.DNSName("*.tinh.gov.vn"),
    x509.IPAddress(ipaddress.ip_address("2001:db8::1")), x509.RFC822Name("admin@tinh.gov.vn"),
]


def certificate(subject: x509.Name, issuer: x509.Name, not_after: dt.datetime, serial: int, alt_names=ALT_NAMES) -> bytes:
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(KEY.public_key())
        .serial_number(serial).not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def cryptographys_fields(der: bytes) -> tuple:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = ",".join([*map(str, san.get_values_for_type(x509.DNSName)), *map(str, san.get_values_for_type(x509.IPAddress))])
    except x509.ExtensionNotFound:
        alt = ""
    return (cert.not_valid_after_utc.timestamp(), cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), alt,
            format(cert.serial_number, "x"))


def ours(der: bytes) -> tuple:
    fields = read_certificate(der)
    return fields.not_after, fields.subject, fields.issuer, fields.alt_names, fields.serial_hex


@pytest.mark.parametrize("subject", sorted(NAMES))
def test_subject_and_issuer_are_written_as_cryptography_writes_them(subject):
    der = certificate(NAMES[subject], NAMES["several"], dt.datetime(2030, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc), 0x1234)
    assert ours(der) == cryptographys_fields(der)


@pytest.mark.parametrize(
    "not_after", [dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc), dt.datetime(2051, 1, 1, tzinfo=dt.timezone.utc)]
)
def test_utctime_and_generalizedtime_expiries(not_after):
    der = certificate(NAMES["plain"], NAMES["plain"], not_after, 1, alt_names=[])
    assert ours(der) == cryptographys_fields(der)


def test_a_large_serial_and_no_alternative_names():
    der = certificate(NAMES["plain"], NAMES["plain"], dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), x509.random_serial_number(), [])
    assert ours(der) == cryptographys_fields(der)


def test_the_test_suites_own_certificates(tmp_path: Path):
    from tests.support.certs import make_ca, make_leaf

    leaf = make_leaf(tmp_path, make_ca(tmp_path), "leaf")
    der = ssl.PEM_cert_to_DER_cert(leaf.cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    assert ours(der) == cryptographys_fields(der)


@pytest.mark.parametrize("garbage", [b"", b"\x30\x82\xff\xff", b"\x04\x03abc", b"\x30\x03\x02\x01"])
def test_what_is_not_a_certificate_is_a_value_error(garbage):
    with pytest.raises(ValueError):
        read_certificate(garbage)
