"""Certificates made by the tests themselves: a CA, leaf certs (valid, expired, wrong name)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class CertFiles:
    cert: Path  # PEM; for leaves, the leaf followed by its issuer (a full chain)
    key: Path
    not_after: dt.datetime
    certificate: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: Path, name: str = "netmon test CA") -> CertFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_after = now + dt.timedelta(days=3650)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, "ca", cert, key, [cert])


def make_leaf(
    directory: Path,
    ca: CertFiles,
    stem: str,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
) -> CertFiles:
    """A server cert signed by ca; pass valid_until in the past for an expired one."""
    now = dt.datetime.now(dt.timezone.utc)
    valid_from = valid_from or now - dt.timedelta(days=1)
    valid_until = valid_until or now + dt.timedelta(days=90)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key, [cert, ca.certificate])


def make_self_signed(directory: Path, stem: str = "selfsigned", names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> CertFiles:
    """A leaf that is its own issuer (no CA): fails verification unless trusted directly."""
    ca = make_ca(directory, names[0])
    ca.cert.rename(directory / f"{stem}.pem")
    ca.key.rename(directory / f"{stem}.key")
    return CertFiles(directory / f"{stem}.pem", directory / f"{stem}.key", ca.not_after, ca.certificate)


def _write(directory: Path, stem: str, cert: x509.Certificate, key, chain: list[x509.Certificate]) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return CertFiles(cert_path, key_path, cert.not_valid_after_utc, cert)
