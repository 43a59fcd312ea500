"""TLS settings, client contexts and certificate metrics shared by every prober that speaks TLS.

Certificates are reported even when verification fails: the caller handshakes with verification,
and on a verification error handshakes again without it just to read the chain (`fetch_chain`).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import warnings
from typing import Any, Literal

import msgspec

from agents.probes.x509fields import read_certificate
from agents.resources import ProbeResources, Resource
from agents.results import Failure, Metric, Reason, Sample
from foundation.config.types import FilePath

TlsVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_VERSION_ORDER = {"TLSv1": 10, "TLSv1.1": 11, "TLSv1.2": 12, "TLSv1.3": 13}

TLS_VERSION_INFO = Metric("probe_tls_version_info", "Returns the TLS version used or NaN when unknown")
TLS_CIPHER_INFO = Metric("probe_tls_cipher_info", "Returns the TLS cipher negotiated during handshake")
EARLIEST_EXPIRY = Metric("probe_ssl_earliest_cert_expiry", "Returns last SSL chain expiry in unixtime")
LAST_CHAIN_EXPIRY = Metric(
    "probe_ssl_last_chain_expiry_timestamp_seconds", "Returns last SSL chain expiry in timestamp"
)
LEAF_EXPIRY = Metric(
    "probe_ssl_leaf_cert_expiry_timestamp_seconds", "Expiry time of the server's own (leaf) certificate in unixtime"
)
CHAIN_INFO = Metric("probe_ssl_last_chain_info", "Contains SSL leaf certificate information")
CERT_VERIFIED = Metric(
    "probe_tls_certificate_verified", "1 if the certificate chain verified against the trusted CAs and name, else 0"
)


class TlsSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: TlsVersionName | None = None


def client_context(settings: TlsSettings, verify: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_file or None)
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file or None)
    # Accept every version the server offers, so an old server is measured and then failed with
    # tls_version by version_ok() after the handshake, instead of an opaque handshake error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    if not verify or settings.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TlsContexts:
    """Client contexts built once per distinct settings: loading the CA store costs milliseconds of CPU."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[TlsSettings, bool, tuple[str, ...]], ssl.SSLContext] = {}

    def get(self, settings: TlsSettings, verify: bool = True, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        key = (settings, verify, alpn)
        context = self._contexts.get(key)
        if context is None:
            context = client_context(settings, verify)
            if alpn:
                context.set_alpn_protocols(list(alpn))
            self._contexts[key] = context
        return context

    def clear(self) -> None:
        """Forget every context (on reload: CA files may have been replaced)."""
        self._contexts.clear()


# Every TLS prober's client contexts, forgotten at a config reload
TLS_CONTEXTS: Resource[TlsContexts] = Resource("tls_contexts", lambda resources: TlsContexts(), reload=TlsContexts.clear)


def prepare_tls(resources: ProbeResources, settings: TlsSettings, alpn: tuple[str, ...] = ()) -> None:
    """Build the client context a TLS probe will use before any probe is timed."""
    resources.get(TLS_CONTEXTS).get(settings, alpn=alpn)


def peer_chain_der(ssl_object: Any) -> list[bytes]:
    """The chain as the server sent it (leaf first); leaf only where the private API is missing."""
    inner = getattr(ssl_object, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None) if inner is not None else None
    if getter is not None:
        try:
            return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in getter() or []]  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - fall back to the leaf below
            pass
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def version_ok(ssl_object: Any, minimum: str | None) -> bool:
    if not minimum:
        return True
    return _VERSION_ORDER.get(ssl_object.version() or "", 0) >= int(minimum[3:])


def session_samples(ssl_object: Any, verified: bool) -> list[Sample]:
    """Version, cipher and certificate metrics of one TLS session."""
    samples = [CERT_VERIFIED(1 if verified else 0)]
    version = ssl_object.version()
    if version:
        samples.append(TLS_VERSION_INFO(1, version=version.replace("TLSv", "TLS ")))
    cipher = ssl_object.cipher()
    if cipher:
        samples.append(TLS_CIPHER_INFO(1, cipher=cipher[0]))
    samples += certificate_samples(peer_chain_der(ssl_object))
    return samples


def certificate_samples(chain_der: list[bytes]) -> list[Sample]:
    certs = []
    for der in chain_der:
        try:
            certs.append(read_certificate(der))
        except ValueError:
            continue
    if not certs:
        return []
    expiries = [cert.not_after for cert in certs]
    leaf = certs[0]
    return [
        EARLIEST_EXPIRY(min(expiries)),
        LAST_CHAIN_EXPIRY(min(expiries)),
        LEAF_EXPIRY(expiries[0]),
        CHAIN_INFO(
            1,
            fingerprint_sha256=hashlib.sha256(chain_der[0]).hexdigest(),
            subject=leaf.subject,
            issuer=leaf.issuer,
            subjectalternative=leaf.alt_names,
            serialnumber=leaf.serial_hex,
        ),
    ]


def classify_tls_error(exc: BaseException) -> Reason:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure.TLS_VERIFY
    return Failure.TLS_HANDSHAKE


async def fetch_chain(host: str, port: int, server_name: str | None, settings: TlsSettings, timeout: float) -> list[Sample]:
    """Handshake again without verification only to read the certificates for the metrics."""
    context = client_context(settings, verify=False)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=server_name or None), timeout
        )
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        return []
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return certificate_samples(peer_chain_der(ssl_object)) if ssl_object else []
    finally:
        writer.transport.abort()
