"""Peer certificates (agents/probes/x509fields.py, our DER reader of the fields the TLS metrics report): whatever
a server sends, reading raises only ValueError, and where cryptography (the reference reader) reads the same
bytes as a certificate, expiry, serial number and alternative names agree."""

from __future__ import annotations

import datetime as dt
import ipaddress

from agents.probes.x509fields import read_certificate

DICTIONARY = [
    b"\x06\x03\x55\x1d\x11",  # subjectAltName's OID
    b"\x06\x03\x55\x04\x03",  # commonName's OID
    b"\x17\x0d" + b"491231235959Z",
    b"\x18\x0f" + b"20500101000000Z",
    b"\xa0\x03\x02\x01\x02",  # version 3
]


def reference(data: bytes):
    """cryptography's reading of the fields, or None where it does not read the bytes as a certificate."""
    from cryptography import x509

    try:
        certificate = x509.load_der_x509_certificate(data)
        not_after = certificate.not_valid_after_utc.timestamp()
        serial = certificate.serial_number
        try:
            alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [*alt.get_values_for_type(x509.DNSName), *(str(a) for a in alt.get_values_for_type(x509.IPAddress))]
        except x509.ExtensionNotFound:
            names = []
    except Exception:  # noqa: BLE001 - any refusal of cryptography's: no reference for these bytes
        return None
    return not_after, serial, names


def check(data: bytes) -> None:
    try:
        fields = read_certificate(data)
    except ValueError:
        return
    expected = reference(data)
    if expected is None:
        return
    not_after, serial, names = expected
    assert fields.not_after == not_after, (fields.not_after, not_after)
    assert int(fields.serial_hex, 16) == serial, (fields.serial_hex, serial)
    assert fields.alt_names == ",".join(names), (fields.alt_names, names)


def seeds() -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.derive_private_key(42, ec.SECP256R1())  # fixed: the same seeds on every machine
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.tinh.gov.vn"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sở Thông tin và Truyền thông")])
    out = []
    for serial, alt_names, not_after in (
        (1, [x509.DNSName("mail.tinh.gov.vn"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], dt.datetime(2049, 12, 31)),
        (2**150, [x509.IPAddress(ipaddress.ip_address("2001:db8::1"))], dt.datetime(2051, 1, 1)),
        (7, [], dt.datetime(2030, 6, 1)),
    ):
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(serial).not_valid_before(dt.datetime(2026, 1, 1)).not_valid_after(not_after))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        out.append(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    return out
