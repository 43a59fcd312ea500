"""A trace round as JSON (`/trace`, `netmon-agent trace --json`) and as an mtr-like table (`netmon-agent trace`)."""

from __future__ import annotations

from typing import Any

from agents.path.analysis import Hop
from agents.path.probe import PathReport, summary

UNREACHABLE_MARKS = {0: "!N", 1: "!H", 2: "!P", 3: "!P", 9: "!X", 10: "!X", 13: "!X"}  # traceroute's, IPv4 codes


def report_json(report: PathReport) -> dict[str, Any]:
    fault = report.fault
    return {
        "target": report.target,
        "ip": report.ip,
        "protocol": report.protocol,
        "socket": report.socket_kind,
        "count": report.count,
        "reached": report.reached,
        "hop_count": report.hop_count,
        "fault_hop": report.fault_hop,
        "fault_address": fault.address if fault else None,
        "failure": str(report.failure) if report.failure else None,
        "detail": summary(report),
        "hops": [hop_json(hop) for hop in report.hops],
    }


def hop_json(hop: Hop) -> dict[str, Any]:
    return {
        "ttl": hop.ttl,
        "address": hop.address,
        "sent": hop.sent,
        "received": hop.received,
        "loss_ratio": round(hop.loss_ratio, 6),
        "rtt_avg_seconds": _rounded(hop.rtt_avg),
        "rtt_min_seconds": _rounded(hop.rtt_min),
        "rtt_max_seconds": _rounded(hop.rtt_max),
        "rtt_stddev_seconds": _rounded(hop.rtt_stddev),
        "rtt_last_seconds": _rounded(hop.rtt_last),
        "responders": hop.responders,
        "silent": hop.silent,
        "destination": hop.destination,
        "unreachable_code": hop.unreachable_code,
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 9)


def report_table(report: PathReport) -> str:
    """mtr --report's columns (RTTs in ms), a note per hop that needs one, and the verdict."""
    via = f"icmp, {report.socket_kind} socket" if report.protocol == "icmp" else report.protocol
    addresses = [_address(hop) for hop in report.hops]
    width = max([len("ADDRESS"), 15, *map(len, addresses)])
    lines = [
        f"trace to {report.target} ({report.ip}): {via}, {report.count} probes per hop",
        f"{'TTL':>4}  {'ADDRESS':<{width}} {'LOSS%':>6} {'SNT':>5} {'RCV':>5} {'LAST':>8} {'AVG':>8} {'BEST':>8} "
        f"{'WRST':>8} {'STDEV':>8}",
    ]
    lines += [_hop_line(hop, address, width) for hop, address in zip(report.hops, addresses)]
    fault = report.fault
    verdict = f"destination reached at hop {report.hops[-1].ttl}" if report.reached else "destination did not answer"
    if fault is not None:
        verdict += f"; fault: loss persists from hop {fault.ttl} ({fault.address or 'no answer'}) to the end of the path"
    else:
        verdict += "; no fault"
    return "\n".join([*lines, verdict])


def _address(hop: Hop) -> str:
    """mtr's ??? for no answer, traceroute's !N / !H for a router's unreachable, and how many others answered."""
    address = hop.address or "???"
    if hop.unreachable_code is not None:
        address += " " + UNREACHABLE_MARKS.get(hop.unreachable_code, f"!<{hop.unreachable_code}>")
    if hop.responders > 1:
        address += f" (+{hop.responders - 1} more)"
    return address


def _hop_line(hop: Hop, address: str, width: int) -> str:
    loss = "silent" if hop.silent else f"{hop.loss_ratio * 100:.1f}"
    times = [_ms(value) for value in (hop.rtt_last, hop.rtt_avg, hop.rtt_min, hop.rtt_max, hop.rtt_stddev)]
    line = f"{hop.ttl:>4}  {address:<{width}} {loss:>6} {hop.sent:>5} {hop.received:>5} " + " ".join(f"{t:>8}" for t in times)
    return line.rstrip()


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.3f}"
