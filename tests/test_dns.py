"""DNS prober against a real dnsmasq that answers authoritatively for test.lan."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import ModuleConfig
from agents.probes.dns import DnsFailure as Failure
from agents.probes.dns import probe
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.blackbox import running_blackbox
from tests.support.dnsmasq import Dnsmasq, free_udp_and_tcp_port, running_dnsmasq
from tests.support.ports import free_port

SERIAL = 2024010101
BIG_TXT_COUNT = 6  # 6 x 200-byte strings: too big for a 512-byte UDP reply, so dnsmasq sets TC
ZONE = [
    "auth-server=ns.test.lan,127.0.0.1",
    "auth-zone=test.lan,192.0.2.0/24,2001:db8::/32",
    f"auth-soa={SERIAL},hostmaster.test.lan",
    "host-record=www.test.lan,192.0.2.10,2001:db8::10",
    "host-record=multi.test.lan,192.0.2.31",
    "host-record=multi.test.lan,192.0.2.32",
    "cname=alias.test.lan,www.test.lan",
    'txt-record=txt.test.lan,"v=spf1 -all"',
    "mx-host=test.lan,mail.test.lan,10",
    *(f'txt-record=big.test.lan,"{index}{"x" * 199}"' for index in range(BIG_TXT_COUNT)),
]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    with running_dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE) as server:
        yield server


def dns_module(settings: str, timeout: str = "2s") -> ModuleConfig:
    config = f"""\
agent: {{id: test-agent, agency: so-test}}
modules:
  m:
    prober: dns
    timeout: {timeout}
    dns:
{textwrap.indent(textwrap.dedent(settings).strip(), " " * 6)}
"""
    return parse_config(config, "test.yml").modules["m"]


async def ask(resolver: str, settings: str, timeout: str = "2s") -> ProbeResult:
    """Blackbox shape: the target is the resolver, the module names the query."""
    return await probe(ProbeTarget("dns", resolver), dns_module(settings, timeout), ProbeResources())


def value(result: ProbeResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.metric.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {[s.metric.name for s in result.samples]}"
    return found[0]


def names(result: ProbeResult) -> set[str]:
    return {sample.metric.name for sample in result.samples}


# --- answers ------------------------------------------------------------------------------------


async def test_a_query_counts_every_address_record(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: multi.test.lan\nquery_type: A")
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 2
    assert value(result, "probe_dns_authority_rrs") == 1  # the zone's NS
    assert value(result, "probe_dns_additional_rrs") == 0
    assert value(result, "probe_dns_rcode") == 0
    assert value(result, "probe_dns_query_succeeded") == 1
    assert value(result, "probe_ip_protocol") == 4


async def test_a_query_reports_each_phase_and_the_whole_query_time(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: www.test.lan\nquery_type: A")
    phases = {phase: value(result, "probe_dns_duration_seconds", phase=phase) for phase in ("resolve", "connect", "request")}
    assert phases["resolve"] == 0  # the resolver is an IP literal
    assert 0 < phases["request"] < 1
    assert value(result, "probe_dns_query_duration_seconds") >= sum(phases.values())
    assert value(result, "probe_dns_lookup_time_seconds") == phases["resolve"], "blackbox's meaning: resolving the resolver"


async def test_aaaa_query_returns_the_ipv6_address(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: www.test.lan
        query_type: AAAA
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['^www\\.test\\.lan\\.\\t600\\tIN\\tAAAA\\t2001:db8::10$']
    """)
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 1


async def test_mx_query_returns_the_mail_exchanger(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: test.lan
        query_type: MX
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['\\tMX\\t10 mail\\.test\\.lan\\.$']
    """)
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 1


async def test_txt_query_returns_the_text(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: txt.test.lan
        query_type: TXT
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['\\tTXT\\t"v=spf1 -all"$']
    """)
    assert result.success, result.detail


async def test_cname_is_answered_with_its_target_address(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: alias.test.lan
        query_type: A
        validate_answer_rrs:
          fail_if_none_matches_regexp: ['^alias\\.test\\.lan\\.\\t600\\tIN\\tCNAME\\twww\\.test\\.lan\\.$']
    """)
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 2  # the CNAME and www's A


async def test_soa_query_reports_the_zone_serial(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: test.lan\nquery_type: SOA")
    assert result.success, result.detail
    assert value(result, "probe_dns_serial") == SERIAL


async def test_ptr_query_of_an_ip_address_asks_for_its_reverse_name(dnsmasq: Dnsmasq) -> None:
    module = dns_module(f"""
        resolver: "{dnsmasq.address}"
        query_type: PTR
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['^10\\.2\\.0\\.192\\.in-addr\\.arpa\\..*\\tPTR\\twww\\.test\\.lan\\.$']
    """)
    result = await probe(ProbeTarget("ptr", "192.0.2.10"), module, ProbeResources())
    assert result.success, result.detail


# --- response codes -----------------------------------------------------------------------------


async def test_nxdomain_fails_with_dns_rcode(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: missing.test.lan\nquery_type: A")
    assert result.failure is Failure.DNS_RCODE
    assert value(result, "probe_dns_rcode") == 3
    assert value(result, "probe_dns_query_succeeded") == 1  # a reply came; it was the wrong one


async def test_nxdomain_succeeds_when_valid_rcodes_allow_it(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: missing.test.lan\nquery_type: A\nvalid_rcodes: [NOERROR, NXDOMAIN]")
    assert result.success, result.detail
    assert value(result, "probe_dns_rcode") == 3


# --- validation of the sections -----------------------------------------------------------------


async def test_answer_matching_the_expected_address_succeeds(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: www.test.lan
        query_type: A
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['\\tA\\t192\\.0\\.2\\.10$']
    """)
    assert result.success, result.detail


async def test_answer_not_matching_the_expected_address_fails_with_answer_mismatch(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: www.test.lan
        query_type: A
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['\\tA\\t192\\.0\\.2\\.99$']
    """)
    assert result.failure is Failure.DNS_ANSWER_MISMATCH
    assert "192.0.2.10" in result.detail


@pytest.mark.parametrize(
    ("rule", "pattern", "passes"),
    [
        ("fail_if_matches_regexp", "192\\.0\\.2\\.32$", False),
        ("fail_if_matches_regexp", "192\\.0\\.2\\.99$", True),
        ("fail_if_not_matches_regexp", "192\\.0\\.2\\.3[12]$", True),
        ("fail_if_not_matches_regexp", "192\\.0\\.2\\.31$", False),
        ("fail_if_all_match_regexp", "192\\.0\\.2\\.3", False),
        ("fail_if_all_match_regexp", "192\\.0\\.2\\.31$", True),
        ("fail_if_none_matches_regexp", "192\\.0\\.2\\.32$", True),
        ("fail_if_none_matches_regexp", "192\\.0\\.2\\.99$", False),
    ],
)
async def test_each_rule_judges_both_answers_of_multi(dnsmasq: Dnsmasq, rule: str, pattern: str, passes: bool) -> None:
    result = await ask(dnsmasq.address, f"""
        query_name: multi.test.lan
        query_type: A
        validate_answer_rrs:
          {rule}: ['{pattern}']
    """)
    assert result.success is passes, result.detail
    assert result.failure is (None if passes else Failure.DNS_ANSWER_MISMATCH)


async def test_authority_section_is_validated_too(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: www.test.lan
        query_type: A
        validate_authority_rrs:
          fail_if_matches_regexp: ['\\tNS\\tns\\.test\\.lan\\.$']
    """)
    assert result.failure is Failure.DNS_ANSWER_MISMATCH
    assert "validate_authority_rrs" in result.detail


async def test_empty_answer_fails_with_no_answer_when_fail_if_no_answer(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: txt.test.lan\nquery_type: A\nfail_if_no_answer: true")
    assert result.failure is Failure.DNS_NO_ANSWER
    assert value(result, "probe_dns_rcode") == 0
    assert value(result, "probe_dns_answer_rrs") == 0


async def test_empty_answer_succeeds_without_fail_if_no_answer(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: txt.test.lan\nquery_type: A")
    assert result.success, result.detail


async def test_empty_answer_fails_with_no_answer_when_a_match_is_required(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, """
        query_name: txt.test.lan
        query_type: A
        validate_answer_rrs:
          fail_if_none_matches_regexp: ['.']
    """)
    assert result.failure is Failure.DNS_NO_ANSWER


# --- transports and addresses -------------------------------------------------------------------


async def test_tcp_transport_gets_the_answer(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: multi.test.lan\nquery_type: A\ntransport_protocol: tcp")
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 2
    assert value(result, "probe_dns_duration_seconds", phase="connect") > 0


async def test_tcp_transport_does_not_fall_back_to_udp() -> None:
    port = free_udp_and_tcp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_only:
        udp_only.bind(("127.0.0.1", port))
        result = await ask(f"127.0.0.1:{port}", "query_name: www.test.lan\ntransport_protocol: tcp")
    assert result.failure is Failure.CONNECT_REFUSED


async def test_truncated_udp_reply_is_asked_again_over_tcp(dnsmasq: Dnsmasq) -> None:
    result = await ask(dnsmasq.address, "query_name: big.test.lan\nquery_type: TXT")
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == BIG_TXT_COUNT  # a truncated UDP reply holds only 2
    assert dnsmasq.log.read_text().count("auth[TXT] big.test.lan from 127.0.0.1") == 2  # UDP, then TCP


async def test_ipv6_resolver_in_brackets_with_port(tmp_path: Path) -> None:
    with running_dnsmasq(tmp_path, ZONE, host="::1") as server:
        result = await ask(server.address, "query_name: www.test.lan\nquery_type: A")
    assert server.address.startswith("[::1]:")
    assert result.success, result.detail
    assert value(result, "probe_ip_protocol") == 6


# --- the two shapes of module -------------------------------------------------------------------


async def test_blackbox_shape_asks_the_target_resolver_for_query_name(dnsmasq: Dnsmasq) -> None:
    module = dns_module("query_name: www.test.lan\nquery_type: A")
    result = await probe(ProbeTarget("resolver", dnsmasq.address), module, ProbeResources())
    assert result.success, result.detail
    assert "auth[A] www.test.lan from 127.0.0.1" in dnsmasq.log.read_text()


async def test_name_shape_asks_the_configured_resolver_for_the_target_name(dnsmasq: Dnsmasq) -> None:
    module = dns_module(f'resolver: "{dnsmasq.address}"\nquery_type: MX')
    result = await probe(ProbeTarget("mail domain", "test.lan"), module, ProbeResources())
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 1
    assert "auth[MX] test.lan from 127.0.0.1" in dnsmasq.log.read_text()


async def test_system_resolver_resolves_localhost() -> None:
    module = dns_module("""
        resolver: system
        query_type: A
        validate_answer_rrs:
          fail_if_not_matches_regexp: ['^localhost\\.\\t0\\tIN\\tA\\t127\\.0\\.0\\.1$']
    """)
    result = await probe(ProbeTarget("localhost", "localhost"), module, ProbeResources())
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 1
    assert value(result, "probe_dns_query_succeeded") == 1
    assert 0 <= value(result, "probe_dns_lookup_time_seconds") < 2
    assert value(result, "probe_dns_query_duration_seconds") == value(result, "probe_dns_lookup_time_seconds")


# --- failures -----------------------------------------------------------------------------------


async def test_udp_port_with_nothing_listening_fails_with_connect_refused_at_once() -> None:
    # the UDP socket is connected, so the ICMP port unreachable from loopback ends the probe
    port = free_port(socket.SOCK_DGRAM)
    started = time.monotonic()
    result = await ask(f"127.0.0.1:{port}", "query_name: www.test.lan", timeout="2s")
    assert result.failure is Failure.CONNECT_REFUSED
    assert time.monotonic() - started < 1
    assert value(result, "probe_dns_query_succeeded") == 0


async def test_silent_resolver_fails_with_timeout_within_the_module_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        result = await ask(f"127.0.0.1:{silent.getsockname()[1]}", "query_name: www.test.lan", timeout="500ms")
        elapsed = time.monotonic() - started
    assert result.failure is Failure.TIMEOUT
    assert 0.45 < elapsed < 1.0
    assert value(result, "probe_dns_query_succeeded") == 0


class _GarbageReplier(asyncio.DatagramProtocol):
    """Answers every query with the query's ID followed by fixed bytes."""

    def __init__(self, after_id: bytes) -> None:
        self.after_id = after_id
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        assert self.transport is not None
        self.transport.sendto(data[:2] + self.after_id, addr)


@pytest.mark.parametrize(
    "after_id",
    [
        pytest.param(b"", id="two-bytes"),
        pytest.param(b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00", id="header-promising-records-that-never-come"),
        pytest.param(b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x04test\x03lan\x00\x00\x01", id="question-cut-short"),
        pytest.param(bytes(range(256)) * 2, id="binary-noise"),
    ],
)
async def test_garbage_udp_reply_fails_with_protocol_error(after_id: bytes) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _GarbageReplier(after_id), local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        result = await ask(f"127.0.0.1:{port}", "query_name: www.test.lan\nquery_type: A")
    finally:
        transport.close()
    assert result.failure is Failure.PROTOCOL_ERROR, result.detail
    assert value(result, "probe_dns_query_succeeded") == 0


async def test_tcp_connection_closed_mid_reply_fails_with_protocol_error() -> None:
    async def half_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(512)
        writer.write(b"\x00\x40\x12\x34")  # promises 64 bytes, sends 2
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_reply, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await ask(f"127.0.0.1:{port}", "query_name: www.test.lan\ntransport_protocol: tcp")
    assert result.failure is Failure.PROTOCOL_ERROR, result.detail


# --- config checks at load ----------------------------------------------------------------------


def test_query_name_and_resolver_together_are_rejected_naming_resolver() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module('query_name: www.test.lan\nresolver: "127.0.0.1"')
    assert "modules.m.dns.resolver" in str(error.value)
    assert "not both" in str(error.value)


def test_module_with_neither_query_name_nor_resolver_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module("query_type: A")
    assert "modules.m.dns.query_name" in str(error.value)


def test_unknown_query_type_is_rejected_naming_query_type() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module("query_name: www.test.lan\nquery_type: AXFR")
    assert "modules.m.dns.query_type" in str(error.value)
    assert "AXFR" in str(error.value)


def test_an_unknown_query_type_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module("query_name: www.test.lan\nquery_type: MXX")
    assert str(error.value).endswith(
        "modules.m.dns.query_type: invalid value 'MXX'; expected one of: A, AAAA, MX, TXT, NS, SOA, CNAME, PTR, SRV, CAA, ANY (in any case)"
    )


async def test_dns_types_classes_and_rcodes_are_accepted_in_any_case(dnsmasq: Dnsmasq) -> None:
    """`query_type: mx` is what dig and zone files accept; the module holds the canonical MX."""
    settings = dns_module("query_name: test.lan\nquery_type: mx\nquery_class: in\nvalid_rcodes: [noError, nxdomain]").settings
    assert (settings.query_type, settings.query_class, settings.valid_rcodes) == ("MX", "IN", ("NOERROR", "NXDOMAIN"))
    result = await ask(dnsmasq.address, "query_name: test.lan\nquery_type: mx\nvalid_rcodes: [noerror]")
    assert result.success, result.detail
    assert value(result, "probe_dns_answer_rrs") == 1


def test_system_resolver_with_a_non_address_type_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module("resolver: system\nquery_type: MX")
    assert "modules.m.dns.query_type" in str(error.value)


def test_system_resolver_with_tcp_transport_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module("resolver: system\ntransport_protocol: tcp")
    assert "modules.m.dns.transport_protocol" in str(error.value)


def test_invalid_answer_regex_is_rejected_naming_the_section() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module("query_name: www.test.lan\nvalidate_answer_rrs:\n  fail_if_matches_regexp: ['(']")
    assert "modules.m.dns.validate_answer_rrs" in str(error.value)
    assert "fail_if_matches_regexp[0]" in str(error.value)


def test_resolver_with_a_bad_port_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        dns_module('resolver: "127.0.0.1:99999"')
    assert "modules.m.dns.resolver" in str(error.value)


def test_loading_the_prober_table_does_not_load_dnspython() -> None:
    code = "import sys, agents.config; sys.exit(any(m == 'dns' or m.startswith('dns.') for m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, timeout=30)
    assert completed.returncode == 0, "an agent without a dns module would pay for dnspython"


# --- agreement with blackbox_exporter -----------------------------------------------------------


BLACKBOX_MODULES = """\
modules:
  dns:
    prober: dns
    timeout: 2s
    dns: {query_name: test.lan, query_type: SOA, preferred_ip_protocol: ip4}
"""


def _blackbox_metrics(tmp_path: Path, resolver: str) -> dict[str, float]:
    with running_blackbox(tmp_path, BLACKBOX_MODULES) as blackbox:
        return blackbox("dns", resolver)


async def test_reports_every_metric_blackbox_reports_for_the_same_query(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    theirs = await asyncio.to_thread(_blackbox_metrics, tmp_path, dnsmasq.address)
    ours = await ask(dnsmasq.address, "query_name: test.lan\nquery_type: SOA")
    their_names = {series.partition("{")[0] for series in theirs} - {"probe_success", "probe_duration_seconds"}
    assert their_names <= names(ours)
    for name in ("probe_dns_answer_rrs", "probe_dns_authority_rrs", "probe_dns_additional_rrs", "probe_dns_serial"):
        assert value(ours, name) == theirs[name], name


async def test_lookup_time_and_address_hash_mean_what_blackbox_means(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """The resolver named by a host name: probe_dns_lookup_time_seconds is the time to resolve that name (equal to
    the resolve phase, in blackbox as here), not the query; probe_ip_addr_hash is the same number."""
    resolver = f"localhost:{dnsmasq.address.rpartition(':')[2]}"
    with running_blackbox(tmp_path, BLACKBOX_MODULES) as blackbox:
        theirs = await asyncio.to_thread(blackbox, "dns", resolver)
    ours = await ask(resolver, "query_name: test.lan\nquery_type: SOA")
    assert ours.success, ours.detail
    for samples in (theirs, {sample.metric.name + _labels(sample.labels): sample.value for sample in ours.samples}):
        assert samples["probe_dns_lookup_time_seconds"] == samples['probe_dns_duration_seconds{phase="resolve"}'] > 0
    assert value(ours, "probe_dns_query_duration_seconds") > value(ours, "probe_dns_lookup_time_seconds")
    assert value(ours, "probe_ip_addr_hash") == theirs["probe_ip_addr_hash"]


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{name}="{text}"' for name, text in labels) + "}" if labels else ""
