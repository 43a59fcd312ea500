"""icmp prober: a round of echo requests spread over the probe, with loss, RTT and jitter.

Every probe sends `count` echo requests `packet_interval` apart through the process's shared
ICMP engine (agents/net/icmp_engine.py) and waits for replies until the module timeout.
Success means at least one reply and a loss ratio not above `max_loss_ratio`.

Jitter is the mean absolute difference between successive RTTs of the round, in arrival order
(the RFC 3550 idea, without its smoothing), not the standard deviation: it measures how much the
delay changes from one packet to the next, which a slow drift of the RTT does not inflate.
"""

from __future__ import annotations

import time

import msgspec

from agents.config.model import ModuleConfig
from agents.net.icmp_engine import ICMP_ENGINE, MIN_PAYLOAD_BYTES, EchoRound
from agents.probes.base import ProberSpec
from agents.probes.resolve import ResolveError, resolve
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample
from foundation.config.types import Duration

MAX_COUNT = 10_000
MAX_PAYLOAD_BYTES = 65_507  # the largest ICMP payload an IPv4 datagram can carry
# The last request must leave the last reply this long (or half the timeout, if shorter) to arrive.
LAST_REPLY_ALLOWANCE_SECONDS = 1.0
# The round ends this much before the module timeout, so the probe returns within it.
ROUND_END_MARGIN_SECONDS = 0.01
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

PACKETS_SENT = Metric(
    "probe_icmp_packets_sent_total", "ICMP echo requests sent, including those a local firewall or route refused", "counter"
)
PACKETS_RECEIVED = Metric("probe_icmp_packets_received_total", "ICMP echo replies received in time", "counter")
LOSS_RATIO = Metric("probe_icmp_packet_loss_ratio", "Share of this probe's echo requests that got no reply in time")
RTT_MIN = Metric("probe_icmp_rtt_min_seconds", "Shortest round-trip time of this probe's echo replies")
RTT_AVG = Metric("probe_icmp_rtt_avg_seconds", "Average round-trip time of this probe's echo replies")
RTT_MAX = Metric("probe_icmp_rtt_max_seconds", "Longest round-trip time of this probe's echo replies")
JITTER = Metric(
    "probe_icmp_jitter_seconds",
    "Mean absolute difference between successive round-trip times of this probe (not the standard deviation)",
)
RTT = Metric("probe_icmp_rtt_seconds", "Round-trip times of ICMP echo replies", "histogram", RTT_BUCKETS)
DURATION = Metric("probe_icmp_duration_seconds", "Duration of icmp request by phase")
REPLY_HOP_LIMIT = Metric("probe_icmp_reply_hop_limit", "Replied packet hop limit (TTL for ipv4)")


class IcmpFailure(Failure):
    PACKET_LOSS = Reason("packet_loss")  # more of the round's requests unanswered than max_loss_ratio allows


class IcmpSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    count: int = 5  # echo requests per probe
    packet_interval: Duration = Duration(1)  # between two echo requests of one probe
    payload_size: int = 56  # bytes after the ICMP header, as ping's default
    max_loss_ratio: float = 1.0  # fail with packet_loss above this; no reply at all always fails

    def validate(self, timeout: float) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"count: must be between 1 and {MAX_COUNT}")
        if self.packet_interval <= 0:
            raise ValueError("packet_interval: must be greater than 0")
        if not MIN_PAYLOAD_BYTES <= self.payload_size <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload_size: must be between {MIN_PAYLOAD_BYTES} and {MAX_PAYLOAD_BYTES} bytes")
        if not 0 <= self.max_loss_ratio <= 1:
            raise ValueError("max_loss_ratio: must be between 0 and 1")
        sending = (self.count - 1) * self.packet_interval
        allowance = min(LAST_REPLY_ALLOWANCE_SECONDS, timeout / 2)
        if sending + allowance > timeout:
            raise ValueError(
                f"packet_interval: {self.count} packets {self.packet_interval:g}s apart take {sending:g}s, which leaves "
                f"the last reply less than {allowance:g}s of the {timeout:g}s module timeout; "
                "lower count or packet_interval, or raise the timeout"
            )


async def probe(target: ProbeTarget, module: ModuleConfig[IcmpSettings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    try:
        resolved = await resolve(
            target.ip or target.address, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout
        )
    except ResolveError as exc:
        return ProbeResult.failed(exc.failure, exc.detail)
    samples: list[Sample] = resolved.samples()
    samples.append(DURATION(resolved.seconds, phase="resolve"))
    started = time.perf_counter()
    engine = resources.get(ICMP_ENGINE)
    try:
        socket_kind = engine.open(resolved.family)
    except OSError as exc:
        detail = (
            f"cannot open an ICMP socket: {exc.strerror}; allow datagram ICMP for this group with "
            "sysctl net.ipv4.ping_group_range, or grant the agent CAP_NET_RAW"
        )
        return ProbeResult.failed(Failure.PERMISSION, detail, samples)
    samples.append(DURATION(time.perf_counter() - started, phase="setup"))
    echo = await engine.ping(
        resolved.ip,
        resolved.family,
        settings.count,
        settings.packet_interval,
        settings.payload_size,
        max(deadline - time.monotonic() - ROUND_END_MARGIN_SECONDS, 0.0),
    )
    samples += round_samples(echo)
    return verdict(echo, settings.max_loss_ratio, f"{socket_kind} socket", samples)


def round_samples(echo: EchoRound) -> list[Sample]:
    rtts = echo.rtts
    samples = [
        PACKETS_SENT(echo.sent),
        PACKETS_RECEIVED(len(rtts)),
        LOSS_RATIO(1 - len(rtts) / echo.count),
        RTT.observe(rtts),
    ]
    if rtts:
        average = sum(rtts) / len(rtts)
        samples += [RTT_MIN(min(rtts)), RTT_AVG(average), RTT_MAX(max(rtts)), DURATION(average, phase="rtt")]
    if len(rtts) > 1:
        samples.append(JITTER(sum(abs(b - a) for a, b in zip(rtts, rtts[1:])) / (len(rtts) - 1)))
    if echo.hop_limit is not None:
        samples.append(REPLY_HOP_LIMIT(echo.hop_limit))
    return samples


def verdict(echo: EchoRound, max_loss_ratio: float, via: str, samples: list[Sample]) -> ProbeResult:
    received = len(echo.rtts)
    summary = f"{received}/{echo.count} echo replies from {echo.ip} ({via})"
    if received:
        summary += f", average RTT {sum(echo.rtts) / received * 1000:.3f} ms"
    if echo.error_detail:
        summary += f"; {echo.error_detail}"
    if not received:
        return ProbeResult.failed(echo.failure or Failure.TIMEOUT, summary, samples)
    loss_ratio = 1 - received / echo.count
    if loss_ratio > max_loss_ratio:
        return ProbeResult.failed(IcmpFailure.PACKET_LOSS, f"{summary}; loss {loss_ratio:.1%} above {max_loss_ratio:.1%}", samples)
    return ProbeResult(success=True, detail=summary, samples=samples)


def prepare(module: ModuleConfig[IcmpSettings], resources: ProbeResources) -> None:
    resources.get(ICMP_ENGINE)


SPEC = ProberSpec("icmp", IcmpSettings, probe, failures=IcmpFailure, prepare=prepare)
