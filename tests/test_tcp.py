"""TCP prober against real listening sockets: plain, implicit TLS, expect/send and STARTTLS conversations."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import time
from pathlib import Path

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import ModuleConfig
from agents.probes.tcp import TcpFailure as Failure
from agents.probes.tcp import probe
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.blackbox import running_blackbox
from tests.support.certs import CertFiles, make_ca, make_leaf, make_self_signed
from tests.support.ports import free_port
from tests.support.tcpservers import LineServer, server_tls_context, serving

PING_PONG = """
    query_response:
      - expect: "^220 "
      - send: PING
      - expect: "^PONG$"
"""


def tcp_module(settings: str = "", timeout: str = "2s") -> ModuleConfig:
    body = textwrap.indent(textwrap.dedent(settings).strip(), " " * 6) or "      {}"
    config = f"""\
agent: {{id: test-agent, agency: so-test}}
modules:
  m:
    prober: tcp
    timeout: {timeout}
    tcp:
{body}
"""
    return parse_config(config, "test.yml").modules["m"]


async def run(address: str, settings: str = "", timeout: str = "2s") -> ProbeResult:
    return await probe(ProbeTarget("tcp", address), tcp_module(settings, timeout), ProbeResources())


def value(result: ProbeResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.metric.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {[s.metric.name for s in result.samples]}"
    return found[0]


def has(result: ProbeResult, name: str) -> bool:
    return any(sample.metric.name == name for sample in result.samples)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def leaf(tmp_path_factory: pytest.TempPathFactory, ca: CertFiles) -> CertFiles:
    return make_leaf(tmp_path_factory.mktemp("leaf"), ca, "server")


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_self_signed(tmp_path_factory.mktemp("selfsigned"))


def closed_port_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --- connect ------------------------------------------------------------------------------------


async def test_open_port_succeeds_and_reports_the_connect_time() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        result = await run(f"127.0.0.1:{listener.getsockname()[1]}")
    assert result.success, result.detail
    assert 0 < value(result, "probe_tcp_connect_duration_seconds") < 1
    assert value(result, "probe_tcp_port_open") == 1
    assert value(result, "probe_ip_protocol") == 4


async def test_port_from_the_module_is_used_when_the_address_has_none() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        result = await run("127.0.0.1", f"port: {listener.getsockname()[1]}")
    assert result.success, result.detail


async def test_closed_port_fails_with_connect_refused_within_the_timeout() -> None:
    started = time.monotonic()
    result = await run(closed_port_address(), timeout="2s")
    assert result.failure is Failure.CONNECT_REFUSED
    assert time.monotonic() - started < 1
    assert value(result, "probe_tcp_port_open") == 0


async def test_must_be_closed_succeeds_on_a_closed_port() -> None:
    result = await run(closed_port_address(), "must_be_closed: true")
    assert result.success, result.detail
    assert value(result, "probe_tcp_port_open") == 0


async def test_must_be_closed_fails_with_port_open_on_an_open_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        result = await run(f"127.0.0.1:{listener.getsockname()[1]}", "must_be_closed: true")
    assert result.failure is Failure.PORT_OPEN
    assert value(result, "probe_tcp_port_open") == 1


# --- implicit TLS -------------------------------------------------------------------------------


async def test_implicit_tls_with_a_ca_signed_cert_reports_version_and_expiry(ca: CertFiles, leaf: CertFiles) -> None:
    server = LineServer(implicit_tls=server_tls_context(leaf))
    async with serving(server) as address:
        result = await run(address, f"tls: true\ntls_config: {{ca_file: '{ca.cert}'}}")
    assert result.success, result.detail
    assert value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    assert value(result, "probe_ssl_earliest_cert_expiry") == leaf.not_after.timestamp()  # the leaf expires first
    assert value(result, "probe_tls_certificate_verified") == 1
    assert value(result, "probe_tcp_tls_handshake_duration_seconds") > 0


async def test_implicit_tls_with_a_self_signed_cert_fails_tls_verify_and_still_reports_expiry(self_signed: CertFiles) -> None:
    server = LineServer(implicit_tls=server_tls_context(self_signed))
    async with serving(server) as address:
        result = await run(address, "tls: true")
    assert result.failure is Failure.TLS_VERIFY
    assert value(result, "probe_ssl_earliest_cert_expiry") == self_signed.not_after.timestamp()


async def test_insecure_skip_verify_accepts_a_self_signed_cert_and_says_unverified(self_signed: CertFiles) -> None:
    server = LineServer(implicit_tls=server_tls_context(self_signed))
    async with serving(server) as address:
        result = await run(address, "tls: true\ntls_config: {insecure_skip_verify: true}")
    assert result.success, result.detail
    assert value(result, "probe_tls_certificate_verified") == 0


async def test_implicit_tls_against_a_plain_server_fails_tls_handshake() -> None:
    async with serving(LineServer()) as address:
        result = await run(address, "tls: true")
    assert result.failure is Failure.TLS_HANDSHAKE


# --- conversations ------------------------------------------------------------------------------


async def test_expect_and_send_steps_talk_to_a_banner_server() -> None:
    async with serving(LineServer()) as address:
        result = await run(address, PING_PONG)
    assert result.success, result.detail
    assert value(result, "probe_failed_due_to_regex") == 0


async def test_expect_mismatch_fails_with_expect_mismatch_and_the_regex_flag() -> None:
    server = LineServer(banner=["554 no service here"], hang_up_after_banner=True)
    async with serving(server) as address:
        result = await run(address, PING_PONG)
    assert result.failure is Failure.EXPECT_MISMATCH
    assert "554 no service here" in result.detail
    assert value(result, "probe_failed_due_to_regex") == 1


async def test_starttls_step_upgrades_the_connection(ca: CertFiles, leaf: CertFiles) -> None:
    server = LineServer(starttls=server_tls_context(leaf))
    async with serving(server) as address:
        result = await run(address, f"""
            tls_config: {{ca_file: '{ca.cert}', server_name: localhost}}
            query_response:
              - expect: "^220 ready"
              - send: STARTTLS
              - expect: "^220 go ahead"
                starttls: true
              - send: PING
              - expect: "^PONG$"
        """)
    assert result.success, result.detail
    assert value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    assert value(result, "probe_ssl_earliest_cert_expiry") == leaf.not_after.timestamp()


async def test_starttls_with_a_self_signed_cert_fails_tls_verify(self_signed: CertFiles) -> None:
    server = LineServer(starttls=server_tls_context(self_signed))
    async with serving(server) as address:
        result = await run(address, """
            query_response:
              - expect: "^220 ready"
              - send: STARTTLS
              - expect: "^220 go ahead"
                starttls: true
        """)
    assert result.failure is Failure.TLS_VERIFY


async def test_server_that_never_sends_the_banner_is_bounded_by_the_module_timeout() -> None:
    async with serving(LineServer(banner=[])) as address:
        started = time.monotonic()
        result = await run(address, PING_PONG, timeout="500ms")
        elapsed = time.monotonic() - started
    assert result.failure is Failure.TIMEOUT
    assert 0.45 < elapsed < 1.0
    assert value(result, "probe_tcp_port_open") == 1


async def test_connection_reset_during_the_conversation_fails_with_connection_reset() -> None:
    async with serving(LineServer(reset_on_connect=True)) as address:
        result = await run(address, PING_PONG)
    assert result.failure is Failure.CONNECTION_RESET
    assert value(result, "probe_tcp_port_open") == 1


async def test_endless_line_fails_with_protocol_error() -> None:
    async with serving(LineServer(banner=["2" * 100_000])) as address:
        result = await run(address, PING_PONG)
    assert result.failure is Failure.PROTOCOL_ERROR


async def test_expect_skips_lines_until_one_matches_like_blackbox() -> None:
    server = LineServer(replies={"EHLO prober": ["250-mail.test.lan", "250-STARTTLS", "250 SMTPUTF8"]})
    async with serving(server) as address:
        result = await run(address, """
            query_response:
              - expect: "^220 "
              - send: EHLO prober
              - expect: "^250-STARTTLS"
        """)
    assert result.success, result.detail


# --- config decoding ----------------------------------------------------------------------------


def test_invalid_expect_regex_is_rejected_at_load_naming_the_step() -> None:
    with pytest.raises(ConfigError) as error:
        tcp_module('query_response: [{expect: "("}]')
    assert "modules.m.tcp.query_response" in str(error.value)
    assert "step 0" in str(error.value)


def test_unknown_key_in_a_step_is_rejected_at_load() -> None:
    with pytest.raises(ConfigError) as error:
        tcp_module("query_response: [{expct: '^220'}]")
    assert "modules.m.tcp.query_response[0].expct" in str(error.value)


def test_missing_ca_file_is_rejected_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        tcp_module(f"tls: true\ntls_config: {{ca_file: '{tmp_path / 'absent.pem'}'}}")
    assert "modules.m.tcp.tls_config.ca_file" in str(error.value)


def targets_of(module: str, *addresses: str) -> str:
    listed = "".join(f'  - {{name: t{index}, address: "{address}", module: m}}\n' for index, address in enumerate(addresses))
    return f"agent: {{id: test-agent, agency: so-test}}\nmodules:\n  m: {module}\ntargets:\n{listed}"


def test_a_target_without_a_port_is_rejected_at_load_when_the_module_has_none() -> None:
    """It used to load and then fail every run with resolve_failed."""
    with pytest.raises(ConfigError) as error:
        parse_config(targets_of("{prober: tcp}", "mail.example", "[2001:db8::1]:25", "2001:db8::1", "mail.example:99999"), "t.yml")
    assert [(one.line, one.path) for one in error.value.each()] == [(5, ("targets", 0, "address")), (7, ("targets", 2, "address")),
                                                                    (8, ("targets", 3, "address"))]
    assert "t.yml:5: targets[0].address: 'mail.example' has no port" in str(error.value)
    assert "write host:port ([v6]:port for IPv6) or set the module's tcp.port" in str(error.value)


def test_a_target_without_a_port_loads_when_the_module_sets_one() -> None:
    config = parse_config(targets_of("{prober: tcp, tcp: {port: 25}}", "mail.example", "2001:db8::1", "[2001:db8::1]:587"))
    assert [target.address for target in config.targets] == ["mail.example", "2001:db8::1", "[2001:db8::1]:587"]


# --- agreement with blackbox_exporter -----------------------------------------------------------


BLACKBOX_TCP = "modules:\n  tcp: {prober: tcp, timeout: 2s, tcp: {preferred_ip_protocol: ip4}}\n"


async def test_address_hash_is_blackboxs_for_ipv4_ipv6_and_names(tmp_path: Path) -> None:
    """blackbox hashes the address's bytes (FNV-1a over 4 or 16 bytes), not its text: the same target gives the
    same probe_ip_addr_hash, so alerts on changes() work across both."""
    with socket.create_server(("127.0.0.1", 0)) as v4, socket.create_server(("::1", 0), family=socket.AF_INET6) as v6:
        port4, port6 = v4.getsockname()[1], v6.getsockname()[1]
        targets = [f"127.0.0.1:{port4}", f"localhost:{port4}", f"[::1]:{port6}"]
        with running_blackbox(tmp_path, BLACKBOX_TCP) as blackbox:
            theirs = [await asyncio.to_thread(blackbox, "tcp", target) for target in targets]
        ours = [await run(target) for target in targets]
    for target, their, our in zip(targets, theirs, ours):
        assert their["probe_success"] == 1 and our.success, (target, our.detail)
        assert value(our, "probe_ip_addr_hash") == their["probe_ip_addr_hash"], target
    assert value(ours[0], "probe_ip_addr_hash") == 3668918509  # FNV-1a of 127.0.0.1's 4 bytes
