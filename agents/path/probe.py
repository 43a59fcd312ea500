"""path prober: per-hop loss and RTT to a target, mtr-grade, and the hop where a degraded path breaks.

Every run is one trace round (agents/net/trace_engine.py): `count` cycles `packet_interval` apart, each
sending one probe to every TTL up to the destination's; ICMP echo by default, or UDP / TCP SYN to `port`
where firewalls drop echo. Success means the destination answered. The samples say, per hop (labels `ttl`
and `hop_address`), what was sent and answered, loss and RTTs; and per path, whether and at which hop the
destination answered, the fault hop (docs/metrics.md#path) and a hash of the path with a counter of its
changes.

Cardinality: one series per family per TTL up to the destination (at most max_hops), whose `hop_address`
is the latest responder at that TTL; when several answer (ECMP, a route change within the round), the
count goes to `probe_path_hop_responders`, not to more series. A TTL that answered nothing this round
keeps the address it last had (so a fault hop that went fully dark is still named), or "" if never.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from agents.config.model import ModuleConfig
from agents.net.icmp_engine import unreachable_failure
from agents.net.trace_engine import TRACE_ENGINE, TraceRound
from agents.path.analysis import Hop, fault_hop, path_hash, reported_hops
from agents.path.triggers import SECTION
from agents.probes.base import ProberSpec
from agents.probes.resolve import ResolveError, resolve
from agents.resources import ProbeResources, Resource
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample
from foundation.config.base import Strict
from foundation.config.types import Duration

MAX_COUNT = 1000
MAX_HOPS = 64
DEFAULT_UDP_PORT = 33434  # traceroute's
# The round ends this much before the module timeout, so the probe returns within it.
ROUND_END_MARGIN_SECONDS = 0.01

HOP_SENT = Metric("probe_path_hop_packets_sent", "Probes sent to this TTL in the last round")
HOP_RECEIVED = Metric("probe_path_hop_packets_received", "Probes to this TTL answered within reply_timeout in the last round")
HOP_LOSS = Metric(
    "probe_path_hop_loss_ratio", "Share of the last round's probes to this TTL left unanswered (absent for a silent hop)"
)
HOP_RTT_MIN = Metric("probe_path_hop_rtt_min_seconds", "Shortest round-trip time to this hop in the last round")
HOP_RTT_AVG = Metric("probe_path_hop_rtt_avg_seconds", "Average round-trip time to this hop in the last round")
HOP_RTT_MAX = Metric("probe_path_hop_rtt_max_seconds", "Longest round-trip time to this hop in the last round")
HOP_RTT_STDDEV = Metric(
    "probe_path_hop_rtt_stddev_seconds", "Population standard deviation of the round-trip times to this hop (never negative)"
)
HOP_RESPONDERS = Metric("probe_path_hop_responders", "Different addresses that answered at this TTL in the last round")
HOP_SILENT = Metric(
    "probe_path_hop_silent", "1 if this hop answered nothing while later hops did (it sends no time exceeded): not a loss"
)
PATH_HOPS = Metric("probe_path_hops", "Hop count: the destination's TTL if it answered, else the last TTL that answered")
PATH_REACHED = Metric("probe_path_destination_reached", "1 if the destination answered in the last round")
PATH_LOSS = Metric("probe_path_loss_ratio", "The destination's loss in the last round (1 if it did not answer)")
FAULT_HOP = Metric(
    "probe_path_fault_hop",
    "TTL of the first hop from which loss persists to the destination (0: none); label hop_address names it",
)
PATH_HASH = Metric("probe_path_hash", "48-bit hash of the hop addresses in TTL order; changes when the path does")
PATH_CHANGES = Metric(
    "probe_path_changes_total", "Rounds that reached the destination over another path than the last round that did", "counter"
)


class PathSettings(Strict):
    protocol: Literal["icmp", "udp", "tcp"] = "icmp"  # echo; or udp / tcp SYN to `port` where firewalls drop echo
    port: int | None = None  # udp: default 33434; tcp: required (an open port answers SYN-ACK, a closed one RST)
    count: int = 10  # probes per hop per round
    packet_interval: Duration = Duration(1)  # between two cycles, each one probe to every hop
    max_hops: int = 30  # the highest TTL probed
    reply_timeout: Duration = Duration(1)  # an answer later than this counts as lost
    loss_threshold: float = 0.1  # a hop whose loss is above this share is lossy (fault_hop)

    def validate(self, timeout: float) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"count: must be between 1 and {MAX_COUNT}")
        if not 1 <= self.max_hops <= MAX_HOPS:
            raise ValueError(f"max_hops: must be between 1 and {MAX_HOPS}")
        if self.packet_interval <= 0:
            raise ValueError("packet_interval: must be greater than 0")
        if self.reply_timeout <= 0:
            raise ValueError("reply_timeout: must be greater than 0")
        if not 0 <= self.loss_threshold < 1:
            raise ValueError("loss_threshold: must be at least 0 and below 1")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError("port: must be between 1 and 65535")
        if self.protocol == "tcp" and self.port is None:
            raise ValueError("port: tcp traces need the port to send SYNs to (e.g. 443)")
        if self.protocol == "icmp" and self.port is not None:
            raise ValueError("port: only udp and tcp traces have a port")
        sending = (self.count - 1) * self.packet_interval
        if sending + self.reply_timeout > timeout:
            raise ValueError(
                f"packet_interval: {self.count} cycles {self.packet_interval:g}s apart take {sending:g}s, which with "
                f"the {self.reply_timeout:g}s reply_timeout does not fit the {timeout:g}s module timeout; "
                "lower count or packet_interval, or raise the timeout"
            )

    @property
    def destination_port(self) -> int:
        return self.port if self.port is not None else (DEFAULT_UDP_PORT if self.protocol == "udp" else 0)


@dataclass(frozen=True, slots=True)
class PathReport:
    """One trace round, read: what /trace and `netmon-agent trace` print and what the samples come from."""

    target: str  # as asked (a name or an address)
    ip: str
    protocol: str
    socket_kind: str
    count: int
    hops: tuple[Hop, ...]
    reached: bool
    fault_hop: int | None
    failure: Reason | None
    error_detail: str

    @property
    def fault(self) -> Hop | None:
        return next((hop for hop in self.hops if hop.ttl == self.fault_hop), None)

    @property
    def destination_loss(self) -> float:
        return self.hops[-1].loss_ratio if self.reached else 1.0

    @property
    def hop_count(self) -> int:
        answered = [hop.ttl for hop in self.hops if hop.received]
        return answered[-1] if answered else 0


class TraceError(Exception):
    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


async def trace_path(address: str, module: ModuleConfig[PathSettings], resources: ProbeResources) -> PathReport:
    """One trace round to address with the module's settings. Raises TraceError (resolving, no socket)."""
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    try:
        resolved = await resolve(address, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout)
    except ResolveError as exc:
        raise TraceError(exc.failure, exc.detail) from None
    engine = resources.get(TRACE_ENGINE)
    try:
        socket_kind = engine.open(resolved.family, settings.protocol)
    except OSError as exc:
        detail = (
            f"cannot open an ICMP socket: {exc.strerror}; allow datagram ICMP for this group with "
            "sysctl net.ipv4.ping_group_range, grant the agent CAP_NET_RAW, or trace with protocol udp or tcp"
        )
        raise TraceError(Failure.PERMISSION, detail) from None
    trace = await engine.trace(
        resolved.ip, resolved.family, settings.protocol, settings.destination_port, settings.count,
        settings.packet_interval, settings.max_hops, settings.reply_timeout,
        max(deadline - time.monotonic() - ROUND_END_MARGIN_SECONDS, 0.0),
    )
    return read_round(address, trace, socket_kind, settings.loss_threshold)


def read_round(address: str, trace: TraceRound, socket_kind: str, loss_threshold: float) -> PathReport:
    hops = tuple(reported_hops(trace))
    reached = trace.destination_ttl is not None
    failure = trace.failure
    if not reached and failure is None:
        last = hops[-1]
        if last.unreachable_code is not None:
            failure = unreachable_failure(trace.family, last.unreachable_code)
        else:
            failure = Failure.TIMEOUT
    return PathReport(
        address, trace.ip, trace.protocol, socket_kind, trace.count, hops, reached, fault_hop(hops, loss_threshold),
        None if reached else failure, trace.error_detail,
    )


@dataclass(slots=True)
class PathMemory:
    """What a target's earlier rounds saw: the last address at each TTL and the last path that reached."""

    addresses: dict[int, str] = field(default_factory=dict)
    reached_hash: int | None = None


# per (target name, IP traced): the memory of its earlier rounds
PATH_MEMORY: Resource[dict[tuple[str, str], PathMemory]] = Resource("path_memory", lambda resources: {})


async def probe(target: ProbeTarget, module: ModuleConfig[PathSettings], resources: ProbeResources) -> ProbeResult:
    try:
        report = await trace_path(target.ip or target.address, module, resources)
    except TraceError as exc:
        return ProbeResult.failed(exc.failure, exc.detail)
    memory = resources.get(PATH_MEMORY).setdefault((target.name, report.ip), PathMemory())
    samples = round_samples(report, memory)
    if report.reached:
        return ProbeResult(success=True, detail=summary(report), samples=samples)
    return ProbeResult.failed(report.failure or Failure.TIMEOUT, summary(report), samples)


def round_samples(report: PathReport, memory: PathMemory) -> list[Sample]:
    """The round's samples; updates the memory (addresses by TTL, the last path that reached)."""
    addresses = [hop.address or memory.addresses.get(hop.ttl) for hop in report.hops]
    samples: list[Sample] = []
    for hop, address in zip(report.hops, addresses):
        samples += hop_samples(hop, ttl=str(hop.ttl), hop_address=address or "")
        if hop.address:
            memory.addresses[hop.ttl] = hop.address
    current = path_hash(addresses)
    changed = report.reached and memory.reached_hash is not None and memory.reached_hash != current
    if report.reached:
        memory.reached_hash = current
    fault = report.fault
    samples += [
        PATH_HOPS(report.hop_count),
        PATH_REACHED(1 if report.reached else 0),
        PATH_LOSS(report.destination_loss),
        FAULT_HOP(fault.ttl if fault else 0, hop_address=(addresses[fault.ttl - 1] or "") if fault else ""),
        PATH_HASH(current),
        PATH_CHANGES(1 if changed else 0),
    ]
    return samples


def hop_samples(hop: Hop, **labels: str) -> list[Sample]:
    samples = [
        HOP_SENT(hop.sent, **labels),
        HOP_RECEIVED(hop.received, **labels),
        HOP_RESPONDERS(hop.responders, **labels),
        HOP_SILENT(1 if hop.silent else 0, **labels),
    ]
    if not hop.silent:
        samples.append(HOP_LOSS(hop.loss_ratio, **labels))
    if hop.received:
        samples += [
            HOP_RTT_MIN(hop.rtt_min or 0.0, **labels),
            HOP_RTT_AVG(hop.rtt_avg or 0.0, **labels),
            HOP_RTT_MAX(hop.rtt_max or 0.0, **labels),
            HOP_RTT_STDDEV(hop.rtt_stddev or 0.0, **labels),
        ]
    return samples


def summary(report: PathReport) -> str:
    via = f"{report.protocol}, {report.socket_kind} socket" if report.protocol == "icmp" else report.protocol
    if report.reached:
        text = f"{report.ip} answered at hop {report.hops[-1].ttl} ({via}), loss {report.destination_loss:.0%}"
    else:
        text = f"{report.ip} did not answer within {len(report.hops)} hops ({via})"
    fault = report.fault
    if fault is not None:
        text += f"; loss from hop {fault.ttl} ({fault.address or 'no answer'}) on"
    if report.error_detail:
        text += f"; {report.error_detail}"
    return text


def module_for(settings: PathSettings, preferred_ip_protocol: Literal["ip4", "ip6"] = "ip4") -> ModuleConfig[PathSettings]:
    """A module for an on-demand trace (the CLI, /trace): its timeout just fits the round."""
    timeout = (settings.count - 1) * settings.packet_interval + settings.reply_timeout + 1.0
    settings.validate(timeout)
    return ModuleConfig("trace", "path", timeout, preferred_ip_protocol, True, settings)


def hop_lines(module: ModuleConfig[PathSettings], result: ProbeResult) -> list[str]:
    """The hops of one result as a table, for `netmon-agent probe --once`."""
    hops: dict[int, dict[str, float | str]] = {}
    for sample in result.samples:
        labels = dict(sample.labels)
        if "ttl" in labels:
            hop = hops.setdefault(int(labels["ttl"]), {"address": labels.get("hop_address") or "???"})
            hop[sample.metric.name] = sample.value
    fault = next((int(s.value) for s in result.samples if s.metric is FAULT_HOP), 0)
    rows = [("TTL", "ADDRESS", "LOSS%", "SNT", "RCV", "AVG")]
    for ttl, hop in sorted(hops.items()):
        loss = hop.get(HOP_LOSS.name)
        average = hop.get(HOP_RTT_AVG.name)
        rows.append((
            str(ttl), str(hop["address"]), "silent" if loss is None else f"{float(loss) * 100:.1f}",
            f"{hop.get(HOP_SENT.name, 0):.0f}", f"{hop.get(HOP_RECEIVED.name, 0):.0f}",
            "" if average is None else f"{float(average) * 1000:.3f}ms",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return lines + ([f"fault: loss persists from hop {fault} to the end of the path"] if fault else [])


SPEC = ProberSpec("path", PathSettings, probe, section=SECTION, result_lines=hop_lines)
