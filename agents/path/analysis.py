"""Reading a trace round as mtr's users read it: which hops to show, which are silent, and where the path breaks.

The rule for the fault hop: loss that starts at a hop and persists through every later hop to the
destination is on the path, and it starts at the first of those hops. Loss at a hop that the hops after
it do not show is that router rate-limiting (or deprioritising) its own ICMP replies: its forwarding is
fine, so it is never the fault. A silent hop (it answers nothing, yet later hops do) says nothing about
the path either way and is skipped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

from agents.net.trace_engine import TraceRound


@dataclass(frozen=True, slots=True)
class Hop:
    ttl: int
    address: str | None  # who answered at this TTL in this round (the latest, if several did); None: nobody
    responders: int  # how many different addresses answered at this TTL (more than one: ECMP, or a route change)
    sent: int
    received: int
    rtt_min: float | None  # seconds; None without an answer
    rtt_avg: float | None
    rtt_max: float | None
    rtt_stddev: float | None  # population standard deviation, never negative
    rtt_last: float | None
    silent: bool  # answered nothing while a later hop did: the router does not send time exceeded
    unreachable_code: int | None = None  # the router answered "destination unreachable" with this ICMP code
    destination: bool = False

    @property
    def loss_ratio(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0

    @property
    def judged_lossy(self) -> bool:
        """Whether this hop says the path loses from here on (a router with no way on breaks it outright)."""
        return self.unreachable_code is not None


def rtt_stats(rtts: Sequence[float]) -> tuple[float, float, float, float, float] | None:
    """(min, avg, max, population standard deviation, last); two passes, so the deviation is never negative."""
    if not rtts:
        return None
    average = sum(rtts) / len(rtts)
    deviation = math.sqrt(sum((rtt - average) ** 2 for rtt in rtts) / len(rtts))
    return min(rtts), average, max(rtts), deviation, rtts[-1]


def reported_hops(trace: TraceRound) -> list[Hop]:
    """The hops worth showing: up to the destination if it answered; else up to where the path ended (a router's
    unreachable), or one hop past the last that answered (where it stops), within max_hops."""
    answered = [ttl for ttl, tally in enumerate(trace.hops, start=1) if tally.rtts]
    last_answered = answered[-1] if answered else 0
    if trace.destination_ttl is not None:
        end = trace.destination_ttl
    elif trace.hops[trace.limit - 1].unreachable_code is not None:
        end = trace.limit
    else:
        end = min(last_answered + 1, len(trace.hops))
    hops = []
    for ttl in range(1, end + 1):
        tally = trace.hops[ttl - 1]
        stats = rtt_stats(tally.rtts) or (None, None, None, None, None)
        hops.append(Hop(
            ttl, tally.last_responder, len(tally.responders), tally.sent, len(tally.rtts), *stats,
            silent=not tally.rtts and ttl < last_answered,
            unreachable_code=tally.unreachable_code,
            destination=ttl == trace.destination_ttl,
        ))
    return hops


def fault_hop(hops: Sequence[Hop], loss_threshold: float) -> int | None:
    """The TTL of the first hop from which loss above the threshold persists to the end of the path; None if the
    end of the path does not lose. Silent hops are skipped; loss that a later hop does not show is not a fault."""
    fault = None
    for hop in reversed(hops):
        if hop.silent:
            continue
        if not (hop.loss_ratio > loss_threshold or hop.judged_lossy):
            break
        fault = hop.ttl
    return fault


def path_hash(addresses: Sequence[str | None]) -> int:
    """A 48-bit hash of the path (exact as a float sample): the hop addresses in TTL order, "*" for none."""
    text = "|".join(address or "*" for address in addresses)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")
