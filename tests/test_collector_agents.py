"""Real netmon agents and the collector: a pull agent scraped, a push agent remote-writing over mTLS with its
bearer token; identity labels from the inventory either way, and liveness when the agent stops."""

from __future__ import annotations

import datetime as dt
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from foundation import remote_write as rw
from tests.support.certs import CertFiles, make_ca, make_leaf
from tests.support.ports import free_port
from tests.support.procs import running, stop, wait_for_port
from tests.test_agent_run import metric_value
from tests.test_collector import INVENTORY, ROOT, TOKENS, probe_series, running_collector, series_lines, wait_until


def agent_yaml(port: int, agent_id: str, agency: str, push: str = "") -> str:
    return f"""\
agent: {{id: {agent_id}, agency: {agency}, labels: {{district: "sent-by-agent"}}}}
listen: 127.0.0.1:{port}
defaults: {{interval: 1s, timeout: 500ms}}
modules:
  tcp_connect: {{prober: tcp}}
targets:
  - {{name: self-port, address: "127.0.0.1:{port}", module: tcp_connect}}
{push}"""


def start_agent(directory: Path, config_text: str) -> tuple[object, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "agent.yml"
    config.write_text(config_text, encoding="utf-8")
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    return running(argv, log_path=str(directory / "agent.log"), cwd=str(ROOT)), directory / "agent.log"


def client_cert(directory: Path, ca: CertFiles, name: str) -> CertFiles:
    """A client certificate (EKU clientAuth, which OpenSSL requires of a client) signed by ca."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return CertFiles(cert_path, key_path, cert.not_valid_after_utc, cert)


def test_pull_agent_is_scraped_with_identity_labels_and_goes_down_when_stopped(tmp_path):
    agent_port = free_port()
    inventory = INVENTORY + f'  - {{id: pulled-1, agency: so-y-te, mode: pull, address: "127.0.0.1:{agent_port}"}}\n'
    extra = "defaults: {interval: 1s, ttl: 4s, scrape_timeout: 500ms}\n"
    agent_context, _ = start_agent(tmp_path / "agent", agent_yaml(agent_port, "pulled-1", "so-y-te"))
    with running_collector(tmp_path / "collector", extra, inventory=inventory) as collector:
        with agent_context as agent:
            wait_for_port("127.0.0.1", agent_port, proc=agent)
            wait_until(lambda: 'target="self-port"' in collector.metrics(), 15, "the agent's series through a scrape")
            text = collector.metrics()
            stop(agent)
            stopped_at = time.time()
            wait_until(lambda: metric_value(collector.metrics(), "netmon_agent_up", agent="pulled-1") == 0.0, 5, "up 0 after a failed scrape")
            down_after = time.time() - stopped_at
            wait_until(lambda: 'target="self-port"' not in collector.metrics(), 10, "series gone after the TTL")
            gone_after = time.time() - stopped_at
    identity = 'agency="so-y-te",agent="pulled-1",district="tp-my-tho",level="department"'
    assert f"up{{{identity}}} 1.0" in series_lines(text, "up")
    assert metric_value(text, "scrape_samples_scraped", agent="pulled-1") > 10
    assert 0 < metric_value(text, "scrape_duration_seconds", agent="pulled-1") < 0.5
    assert metric_value(text, "netmon_agent_up", agent="pulled-1") == 1.0
    assert any(identity in line and 'target="self-port"' in line for line in series_lines(text, "probe_success"))
    assert not any("sent-by-agent" in line for line in text.splitlines())  # the inventory's district wins
    assert down_after < 2.5 and gone_after < 4 + 2.5


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(tmp_path / "pki")
    return {"ca": ca, "server": make_leaf(tmp_path / "pki", ca, "collector"), "client": client_cert(tmp_path / "pki", ca, "agent-so-tttt-1")}


def mtls_section(pki) -> str:
    return (
        f"tls_server_config: {{cert_file: {pki['server'].cert}, key_file: {pki['server'].key}, "
        f"client_auth_type: RequireAndVerifyClientCert, client_ca_file: {pki['ca'].cert}, min_version: TLS12}}\n"
    )


def https_get(url: str, pki, with_client_cert: bool) -> str:
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    if with_client_cert:
        context.load_cert_chain(str(pki["client"].cert), str(pki["client"].key))
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return reply.read().decode()


def test_push_agent_writes_over_mtls_with_its_token_and_gets_its_identity(tmp_path, pki):
    agent_port = free_port()
    with running_collector(tmp_path / "collector", "defaults: {interval: 1s}\n" + mtls_section(pki)) as collector:
        url = f"https://localhost:{collector.port}/api/v1/write"
        token_file = tmp_path / "push.token"
        token_file.write_text(TOKENS["so-tttt-1"] + "\n")
        push = (
            f"push:\n  url: {url}\n  bearer_token_file: {token_file}\n  interval: 500ms\n"
            f"  tls: {{ca_file: {pki['ca'].cert}, cert_file: {pki['client'].cert}, key_file: {pki['client'].key}}}\n"
            f"  queue: {{directory: {tmp_path / 'queue'}}}\n"
        )
        # The agent claims another agency: the token decides.
        agent_context, agent_log = start_agent(tmp_path / "agent", agent_yaml(agent_port, "liar", "xa-my-tho", push))
        base = f"https://localhost:{collector.port}"
        with agent_context as agent:
            wait_for_port("127.0.0.1", agent_port, proc=agent)
            wait_until(lambda: 'target="self-port"' in https_get(f"{base}/metrics", pki, True), 20, "pushed series")
            text = https_get(f"{base}/metrics", pki, True)
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            https_get(f"{base}/metrics", pki, False)
    identity = 'agency="so-tttt",agent="so-tttt-1",district="tp-my-tho",level="department"'
    assert any(identity in line and 'target="self-port"' in line for line in series_lines(text, "probe_success"))
    assert metric_value(text, "netmon_agent_up", agent="so-tttt-1") == 1.0
    assert TOKENS["so-tttt-1"] not in collector.log.read_text() + agent_log.read_text()


def test_pushes_without_identity_labels_and_with_them_become_one_series(tmp_path):
    with running_collector(tmp_path) as collector:
        from tests.test_collector import push

        plain = probe_series(target="twice")
        claimed = probe_series(target="twice", agency="so-y-te", agent="other")
        assert push(collector.url, rw.encode([plain, claimed]), TOKENS["so-tttt-1"])[0] == 204
        lines = [line for line in series_lines(collector.metrics(), "probe_success") if 'target="twice"' in line]
    assert len(lines) == 1 and 'agency="so-tttt",agent="so-tttt-1"' in lines[0]
