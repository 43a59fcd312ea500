"""DNS prober: one query of a configured type to a resolver, judged the way blackbox_exporter judges it.

A module has one of two shapes, checked at load:

* blackbox's: the module sets ``query_name`` and the target address is the resolver (``ip``, ``ip:port``,
  ``[v6]:port`` or a host name; port 53 by default), so ``/probe?target=<resolver>&module=dns`` works as there.
* ours: the module sets ``resolver`` and the target address is the name to ask for, so one module checks many
  names against one resolver. ``resolver: system`` asks the operating system instead (getaddrinfo: /etc/hosts,
  then nsswitch). That path knows only A and AAAA (unset query_type: the module's preferred_ip_protocol with its
  fallback) and reports only probe_dns_lookup_time_seconds and probe_dns_query_duration_seconds (both the
  getaddrinfo time), probe_dns_answer_rrs (distinct addresses) and probe_dns_query_succeeded;
  validate_answer_rrs sees each address as ``name.<TAB>0<TAB>IN<TAB>A<TAB>address``.

RRs are matched as miekg/dns prints them (``name.<TAB>ttl<TAB>class<TAB>type<TAB>rdata``), so blackbox regexps
keep working. Where this prober deliberately differs from blackbox_exporter 0.23:

* probe_dns_query_duration_seconds (ours) is the whole query (resolve + connect + request, a TCP retry
  included), reported when a reply arrived. probe_dns_lookup_time_seconds means what it means in blackbox:
  the time to resolve the name of the host the probe talks to (the resolver; 0 for an IP literal), the same
  value as probe_dns_duration_seconds{phase="resolve"}. With ``resolver: system`` the lookup is the query, so
  both carry the getaddrinfo time.
* probe_dns_rcode (ours) is the numeric response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED, ...
  A number, not a label, so it adds no series; alert on ``probe_dns_rcode != 0``.
* RR counts are reported only when a reply arrived (blackbox reports 0 when there was none).
* fail_if_all_match_regexp fails when every RR of the section matches the regexp, as its name says; blackbox's
  code fails when *not* every RR matches, which only repeats fail_if_not_matches_regexp.
* An empty answer section that a validator needed fails with dns_no_answer; ``fail_if_no_answer`` (ours) asks
  for at least one answer RR without writing a regexp.

A UDP reply with the TC bit set is asked again over TCP, as stub resolvers do; the connect and request phases
then add up both attempts. The UDP socket is connected, so an ICMP port unreachable fails the probe at once with
connect_refused (blackbox behaves the same); a resolver that stays silent fails with timeout.
dnspython is imported inside the functions: agents without a dns module never load it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import msgspec

from agents import linear_regex
from agents.config.model import ModuleConfig
from agents.probes.base import ProberSpec
from agents.probes.resolve import DNS_LOOKUP_TIME, ResolveError, resolve, resolve_all, split_host_port
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample, socket_failure
from foundation.config.types import Choice

if TYPE_CHECKING:
    import dns.message
    import dns.rrset

DURATION = Metric("probe_dns_duration_seconds", "Duration of DNS request by phase")
ANSWER_RRS = Metric("probe_dns_answer_rrs", "Returns number of entries in the answer resource record list")
AUTHORITY_RRS = Metric("probe_dns_authority_rrs", "Returns number of entries in the authority resource record list")
ADDITIONAL_RRS = Metric("probe_dns_additional_rrs", "Returns number of entries in the additional resource record list")
QUERY_SUCCEEDED = Metric("probe_dns_query_succeeded", "Displays whether or not the query was executed successfully")
SERIAL = Metric("probe_dns_serial", "Returns the serial number of the zone")
QUERY_DURATION = Metric(
    "probe_dns_query_duration_seconds", "Time from the start of the query to its reply: resolving the resolver, connecting, asking"
)
RCODE = Metric("probe_dns_rcode", "Response code of the DNS reply as a number (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED)")

DNS_PORT = 53
SYSTEM = "system"  # `resolver: system`: the operating system's resolver


# DNS mnemonics are case-insensitive (RFC 1035 master files, dig): `query_type: mx` is MX
class QueryType(Choice):
    values = ("A", "AAAA", "MX", "TXT", "NS", "SOA", "CNAME", "PTR", "SRV", "CAA", "ANY")


class QueryClass(Choice):
    values = ("IN", "CH", "HS", "ANY")


class RcodeName(Choice):
    values = (
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
        "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "BADVERS",
    )


class DnsFailure(Failure):
    DNS_RCODE = Reason("dns_rcode")  # the answer's rcode is not one of valid_rcodes
    DNS_ANSWER_MISMATCH = Reason("dns_answer_mismatch")  # a validate_*_rrs rule failed
    DNS_NO_ANSWER = Reason("dns_no_answer")  # the answer section is empty where an answer was required


class RRValidator(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Regexps over one section's RRs, each RR as one line of text; unanchored, like Go's MatchString."""

    fail_if_matches_regexp: list[str] = []  # fail if any RR matches
    fail_if_not_matches_regexp: list[str] = []  # fail if any RR does not match (or there is no RR)
    fail_if_all_match_regexp: list[str] = []  # fail if there are RRs and every one matches
    fail_if_none_matches_regexp: list[str] = []  # fail if no RR matches any of them (or there is no RR)

    def patterns(self) -> dict[str, list[str]]:
        return {
            "fail_if_matches_regexp": self.fail_if_matches_regexp,
            "fail_if_not_matches_regexp": self.fail_if_not_matches_regexp,
            "fail_if_all_match_regexp": self.fail_if_all_match_regexp,
            "fail_if_none_matches_regexp": self.fail_if_none_matches_regexp,
        }

    def is_set(self) -> bool:
        return any(self.patterns().values())

    def check(self) -> None:
        for key, patterns in self.patterns().items():
            for index, pattern in enumerate(patterns):
                linear_regex.check_patterns(f"{key}[{index}]", [pattern])

    def problem(self, lines: list[str]) -> str | None:
        """Why these RRs fail the validation, or None when they pass."""
        if not lines and (self.fail_if_not_matches_regexp or self.fail_if_none_matches_regexp):
            return "no RRs, but a match is required"
        for pattern in self.fail_if_matches_regexp:
            hit = next((line for line in lines if linear_regex.search(pattern, line)), None)
            if hit is not None:
                return f"{hit!r} matches {pattern!r}"
        for pattern in self.fail_if_not_matches_regexp:
            miss = next((line for line in lines if not linear_regex.search(pattern, line)), None)
            if miss is not None:
                return f"{miss!r} does not match {pattern!r}"
        for pattern in self.fail_if_all_match_regexp:
            if lines and all(linear_regex.search(pattern, line) for line in lines):
                return f"every RR matches {pattern!r}"
        patterns = self.fail_if_none_matches_regexp
        if patterns and not any(linear_regex.search(pattern, line) for pattern in patterns for line in lines):
            return f"no RR matches any of {patterns!r}"
        return None


class DnsSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    query_name: str | None = None  # blackbox shape: the target is the resolver
    resolver: str | None = None  # our shape: the target is the name; an address or `system`
    query_type: QueryType | None = None  # unset: ANY (blackbox's default); with `system`, see the module doc
    query_class: QueryClass = QueryClass("IN")
    transport_protocol: Literal["udp", "tcp"] = "udp"
    recursion_desired: bool = True
    valid_rcodes: tuple[RcodeName, ...] = (RcodeName("NOERROR"),)
    validate_answer_rrs: RRValidator = RRValidator()
    validate_authority_rrs: RRValidator = RRValidator()
    validate_additional_rrs: RRValidator = RRValidator()
    fail_if_no_answer: bool = False

    def validate(self, timeout: float) -> None:
        if self.query_name is not None and self.resolver is not None:
            raise ValueError(
                "resolver: set either query_name (the target is then the resolver) "
                "or resolver (the target is then the name to query), not both"
            )
        if self.query_name is None and self.resolver is None:
            raise ValueError(
                "query_name: missing; set query_name (the target is then the resolver) "
                "or resolver (the target is then the name to query)"
            )
        if self.query_name is not None:
            _check_name(self.query_name)
        if self.resolver == SYSTEM:
            self._check_system()
        elif self.resolver is not None:
            try:
                split_host_port(self.resolver, DNS_PORT)
            except ValueError as exc:
                raise ValueError(f"resolver: {exc}") from None
        for key, validator in self.validators().items():
            try:
                validator.check()
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None

    def validators(self) -> dict[str, RRValidator]:
        return {
            "validate_answer_rrs": self.validate_answer_rrs,
            "validate_authority_rrs": self.validate_authority_rrs,
            "validate_additional_rrs": self.validate_additional_rrs,
        }

    def _check_system(self) -> None:
        if self.query_type not in (None, "A", "AAAA"):
            raise ValueError("query_type: resolver: system looks up addresses only (A or AAAA)")
        unsupported = {
            "query_class": self.query_class != "IN",
            "transport_protocol": self.transport_protocol != "udp",
            "recursion_desired": not self.recursion_desired,
            "valid_rcodes": self.valid_rcodes != ("NOERROR",),
            "validate_authority_rrs": self.validate_authority_rrs.is_set(),
            "validate_additional_rrs": self.validate_additional_rrs.is_set(),
        }
        for key, is_set in unsupported.items():
            if is_set:
                raise ValueError(f"{key}: not available with resolver: system (the OS resolver returns addresses only)")


def _check_name(name: str) -> None:
    import dns.exception
    import dns.name

    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ValueError(f"query_name: invalid DNS name {name!r}: {exc}") from None


@dataclass(slots=True)
class _Phases:
    """Seconds per phase, filled in as each step ends, so a failed probe still reports what it measured."""

    resolve: float = 0.0
    connect: float = 0.0
    request: float = 0.0

    def samples(self) -> list[Sample]:
        return [
            DURATION(self.resolve, phase="resolve"),
            DURATION(self.connect, phase="connect"),
            DURATION(self.request, phase="request"),
        ]


async def probe(target: ProbeTarget, module: ModuleConfig[DnsSettings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    name = settings.query_name if settings.query_name is not None else target.address
    if settings.resolver == SYSTEM:
        return await _probe_system(name, module, settings)
    import dns.exception

    try:
        query = _make_query(name, settings)
        host, port = split_host_port(settings.resolver or target.address, DNS_PORT)
    except (ValueError, dns.exception.DNSException) as exc:
        return ProbeResult.failed(Failure.RESOLVE, str(exc), [QUERY_SUCCEEDED(0)])
    if settings.query_name is not None and target.ip:
        host = target.ip
    return await _probe_resolver(query, host, port, module, settings)


async def _probe_resolver(
    query: dns.message.Message, host: str, port: int, module: ModuleConfig[DnsSettings], settings: DnsSettings
) -> ProbeResult:
    import dns.exception

    phases = _Phases()
    started = time.perf_counter()
    samples: list[Sample] = []
    try:
        async with asyncio.timeout(module.timeout):
            resolved = await resolve(host, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout)
            phases.resolve = resolved.seconds
            samples += resolved.samples()
            response = await _exchange(query, resolved.ip, port, settings.transport_protocol, phases)
    except TimeoutError:
        return _no_reply(Failure.TIMEOUT, f"no reply from {host}:{port} within {module.timeout:g}s", samples, phases)
    except ResolveError as exc:
        return _no_reply(exc.failure, exc.detail, samples, phases)
    except EOFError:
        return _no_reply(Failure.PROTOCOL_ERROR, f"{host}:{port} closed the connection without a reply", samples, phases)
    except OSError as exc:
        return _no_reply(socket_failure(exc), f"{host}:{port}: {exc.strerror or exc}", samples, phases)
    except dns.exception.DNSException as exc:
        return _no_reply(Failure.PROTOCOL_ERROR, f"bad reply from {host}:{port}: {exc}", samples, phases)
    except Exception as exc:  # noqa: BLE001 - dnspython's wire parser may raise others on hostile bytes
        return _no_reply(Failure.PROTOCOL_ERROR, f"unreadable reply from {host}:{port}: {exc!r}", samples, phases)
    samples += phases.samples()
    samples.append(QUERY_DURATION(time.perf_counter() - started))
    return _judge(response, settings, samples)


def _no_reply(failure: Reason, detail: str, samples: list[Sample], phases: _Phases) -> ProbeResult:
    return ProbeResult.failed(failure, detail, samples + phases.samples() + [QUERY_SUCCEEDED(0)])


def _make_query(name: str, settings: DnsSettings) -> dns.message.Message:
    import dns.flags
    import dns.message
    import dns.name
    import dns.reversename

    query_type = settings.query_type or "ANY"
    if query_type == "PTR" and _is_ip(name):
        qname = dns.reversename.from_address(name)
    else:
        qname = dns.name.from_text(name)
    query = dns.message.make_query(qname, query_type, settings.query_class)
    if not settings.recursion_desired:
        query.flags &= ~dns.flags.RD
    return query


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _exchange(query: dns.message.Message, ip: str, port: int, transport: str, phases: _Phases) -> dns.message.Message:
    import dns.message

    try:
        return await _ask_once(query, ip, port, transport, phases)
    except dns.message.Truncated:
        return await _ask_once(query, ip, port, "tcp", phases)


async def _ask_once(query: dns.message.Message, ip: str, port: int, transport: str, phases: _Phases) -> dns.message.Message:
    import dns.asyncbackend
    import dns.asyncquery
    import dns.inet

    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    started = time.perf_counter()
    try:
        sock = await dns.asyncbackend.get_backend("asyncio").make_socket(dns.inet.af_for_address(ip), kind, 0, None, (ip, port))
    finally:
        phases.connect += time.perf_counter() - started
    async with sock:
        started = time.perf_counter()
        try:
            if transport == "tcp":
                return await dns.asyncquery.tcp(query, ip, port=port, sock=sock)
            return await dns.asyncquery.udp(query, ip, port=port, sock=sock, raise_on_truncation=True)
        finally:
            phases.request += time.perf_counter() - started


def _judge(response: dns.message.Message, settings: DnsSettings, samples: list[Sample]) -> ProbeResult:
    import dns.rcode
    import dns.rdatatype

    rcode = response.rcode()
    samples += [
        ANSWER_RRS(_count(response.answer)),
        AUTHORITY_RRS(_count(response.authority)),
        ADDITIONAL_RRS(_count(response.additional)),
        QUERY_SUCCEEDED(1),
        RCODE(rcode),
    ]
    if settings.query_type == "SOA":
        soas = [rdata for rrset in response.answer if rrset.rdtype == dns.rdatatype.SOA for rdata in rrset]
        if soas:
            samples.append(SERIAL(soas[-1].serial))
    if rcode not in {dns.rcode.from_text(name) for name in settings.valid_rcodes}:
        detail = f"rcode {dns.rcode.to_text(rcode)} is not one of {', '.join(settings.valid_rcodes)}"
        return ProbeResult.failed(DnsFailure.DNS_RCODE, detail, samples)
    sections = {
        "validate_answer_rrs": response.answer,
        "validate_authority_rrs": response.authority,
        "validate_additional_rrs": response.additional,
    }
    for key, validator in settings.validators().items():
        failed = _validate(key, validator, _rr_lines(sections[key]), samples)
        if failed is not None:
            return failed
    if settings.fail_if_no_answer and not response.answer:
        return ProbeResult.failed(DnsFailure.DNS_NO_ANSWER, "the answer section is empty", samples)
    return ProbeResult(success=True, samples=samples)


def _validate(key: str, validator: RRValidator, lines: list[str], samples: list[Sample]) -> ProbeResult | None:
    problem = validator.problem(lines)
    if problem is None:
        return None
    failure = DnsFailure.DNS_NO_ANSWER if key == "validate_answer_rrs" and not lines else DnsFailure.DNS_ANSWER_MISMATCH
    return ProbeResult.failed(failure, f"{key}: {problem}", samples)


def _count(section: list[dns.rrset.RRset]) -> int:
    return sum(len(rrset) for rrset in section)


def _rr_lines(section: list[dns.rrset.RRset]) -> list[str]:
    """One line per RR, tab-separated the way miekg/dns prints it, so blackbox regexps match."""
    import dns.rdataclass
    import dns.rdatatype

    return [
        f"{rrset.name}\t{rrset.ttl}\t{dns.rdataclass.to_text(rrset.rdclass)}\t{dns.rdatatype.to_text(rrset.rdtype)}\t{rdata.to_text()}"
        for rrset in section
        for rdata in rrset
    ]


async def _probe_system(name: str, module: ModuleConfig[DnsSettings], settings: DnsSettings) -> ProbeResult:
    if settings.query_type == "A":
        preferred, fallback = "ip4", False
    elif settings.query_type == "AAAA":
        preferred, fallback = "ip6", False
    else:
        preferred, fallback = module.preferred_ip_protocol, module.ip_protocol_fallback
    try:
        # resolve_all bounds each address family on its own; the module timeout bounds them together
        async with asyncio.timeout(module.timeout):
            addresses = await resolve_all(name, preferred, fallback, module.timeout)
    except TimeoutError:
        return ProbeResult.failed(Failure.TIMEOUT, f"resolving {name} timed out", [QUERY_SUCCEEDED(0)])
    except ResolveError as exc:
        return ProbeResult.failed(exc.failure, exc.detail, [QUERY_SUCCEEDED(0)])
    lookup = addresses[0].seconds
    samples = [DNS_LOOKUP_TIME(lookup), QUERY_DURATION(lookup), ANSWER_RRS(len(addresses)), QUERY_SUCCEEDED(1)]
    fqdn = name if name.endswith(".") else name + "."
    lines = [f"{fqdn}\t0\tIN\t{'AAAA' if a.family == socket.AF_INET6 else 'A'}\t{a.ip}" for a in addresses]
    failed = _validate("validate_answer_rrs", settings.validate_answer_rrs, lines, samples)
    return failed or ProbeResult(success=True, samples=samples)


def prepare(module: ModuleConfig[DnsSettings], resources: ProbeResources) -> None:
    """dnspython (imported on first use: agents without DNS probes never load it), its asyncio backend and the
    record types the answers will hold (dnspython imports each on the first answer that has one)."""
    import dns.asyncbackend
    import dns.asyncquery
    import dns.rcode
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    dns.asyncbackend.get_backend("asyncio")
    query = _make_query("example.", module.settings)
    for rdtype in {query.question[0].rdtype, dns.rdatatype.SOA, dns.rdatatype.CNAME}:
        if rdtype != dns.rdatatype.ANY:
            dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype)


SPEC = ProberSpec("dns", DnsSettings, probe, failures=DnsFailure, prepare=prepare)
