"""TLS and mTLS for the collector's listener, from exporter-toolkit's web.yml `tls_server_config` keys."""

from __future__ import annotations

import ssl

from collector.config_model import TlsServerConfig

_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


def server_ssl_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """Python's ssl verifies every client certificate it asks for: the two "Any" modes (where Go accepts an
    unverified certificate) verify against client_ca_file like the Verify modes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.load_verify_locations(cafile=tls.client_ca_file)
    context.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    return context
