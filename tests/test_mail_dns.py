"""Mail DNS records (MX present, SPF TXT present and not `+all`) checked by the dns prober, written as a province
would write them in its config, against a real dnsmasq answering for three domains."""

from __future__ import annotations

from typing import Iterator

import pytest

from agents.catalog import parse_config
from agents.config import AgentConfig
from agents.probes.dns import DnsFailure as Failure
from agents.resources import ProbeResources
from agents.results import ProbeResult
from agents.runner import run_target
from tests.support.dnsmasq import Dnsmasq, running_dnsmasq

ZONES = [
    "auth-server=ns.gov.vn,127.0.0.1",
    "auth-zone=tinh.gov.vn",  # MX and a strict SPF record, next to an unrelated TXT record
    "mx-host=tinh.gov.vn,mail.tinh.gov.vn,10",
    'txt-record=tinh.gov.vn,"v=spf1 mx -all"',
    'txt-record=tinh.gov.vn,"google-site-verification=abc123"',
    "auth-zone=xa.gov.vn",  # neither MX nor SPF
    "host-record=www.xa.gov.vn,192.0.2.5",
    "auth-zone=lax.gov.vn",  # an SPF record that lets anybody send as the domain
    "mx-host=lax.gov.vn,mail.tinh.gov.vn,10",
    'txt-record=lax.gov.vn,"v=spf1 +all"',
]


def mail_dns_config(resolver: str) -> str:
    return f"""\
agent: {{id: so-tttt-01, agency: so-tttt}}
modules:
  mail_mx:                       # the domain's mail goes to the province's mail server
    prober: dns
    timeout: 2s
    dns:
      resolver: "{resolver}"
      query_type: MX
      validate_answer_rrs:
        fail_if_none_matches_regexp: ['\\tMX\\t\\d+ mail\\.tinh\\.gov\\.vn\\.$']
  mail_spf:                      # an SPF policy is published, and it is not "+all"
    prober: dns
    timeout: 2s
    dns:
      resolver: "{resolver}"
      query_type: TXT
      validate_answer_rrs:
        fail_if_none_matches_regexp: ['\\tTXT\\t"v=spf1 ']
        fail_if_matches_regexp: ['\\tTXT\\t"v=spf1 .*[+]all"$']
targets:
  - {{name: mx-tinh, address: tinh.gov.vn, module: mail_mx}}
  - {{name: spf-tinh, address: tinh.gov.vn, module: mail_spf}}
  - {{name: mx-xa, address: xa.gov.vn, module: mail_mx}}
  - {{name: spf-xa, address: xa.gov.vn, module: mail_spf}}
  - {{name: spf-lax, address: lax.gov.vn, module: mail_spf}}
"""


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    with running_dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONES) as server:
        yield server


@pytest.fixture(scope="module")
def config(dnsmasq: Dnsmasq) -> AgentConfig:
    return parse_config(mail_dns_config(dnsmasq.address), "mail-dns.yml")


async def check(config: AgentConfig, name: str) -> ProbeResult:
    target = config.target(name)
    assert target is not None
    return await run_target(target, ProbeResources())


async def test_mx_pointing_at_the_mail_server_passes(config: AgentConfig) -> None:
    result = await check(config, "mx-tinh")
    assert result.success, result.detail


async def test_spf_record_among_other_txt_records_passes(config: AgentConfig) -> None:
    result = await check(config, "spf-tinh")
    assert result.success, result.detail


async def test_domain_without_mx_fails_with_no_answer(config: AgentConfig) -> None:
    result = await check(config, "mx-xa")
    assert result.failure is Failure.DNS_NO_ANSWER


async def test_domain_without_spf_fails_with_no_answer(config: AgentConfig) -> None:
    result = await check(config, "spf-xa")
    assert result.failure is Failure.DNS_NO_ANSWER


async def test_spf_allowing_everyone_fails_with_answer_mismatch(config: AgentConfig) -> None:
    result = await check(config, "spf-lax")
    assert result.failure is Failure.DNS_ANSWER_MISMATCH
    assert "+all" in result.detail

