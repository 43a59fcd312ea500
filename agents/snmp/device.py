"""Everything one device keeps between polls: caches, bulk size, uptime history, the last good data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agents.results import Sample
from agents.snmp.labels import TableCache
from agents.snmp.plan import Plan
from agents.snmp.usm import UsmPeer
from agents.snmp.walker import BulkSize

TICKS_PER_SECOND = 100
TICKS_WRAP = 2**32  # sysUpTime is TimeTicks: it wraps after 497 days
WRAP_TOLERANCE_TICKS = 30 * TICKS_PER_SECOND


@dataclass(slots=True)
class Uptime:
    """sysUpTime across polls: a decrease is a reboot, unless it is the 2^32 wrap we expected by now."""

    ticks: int | None = None
    seen_at: float = 0.0  # monotonic
    wraps: int = 0
    reboots: int = 0

    def update(self, ticks: int, now: float) -> bool:
        """Take a new reading; True if the device rebooted since the last one."""
        previous, elapsed = self.ticks, (now - self.seen_at) * TICKS_PER_SECOND
        self.ticks, self.seen_at = ticks, now
        if previous is None or ticks >= previous:
            return False
        expected = previous + elapsed - TICKS_WRAP
        if expected >= 0 and abs(expected - ticks) <= WRAP_TOLERANCE_TICKS + elapsed * 0.1:
            self.wraps += 1
            return False
        self.wraps = 0
        self.reboots += 1
        return True

    @property
    def seconds(self) -> float | None:
        return None if self.ticks is None else (self.wraps * TICKS_WRAP + self.ticks) / TICKS_PER_SECOND


@dataclass(slots=True)
class LastGood:
    samples: list[Sample]
    at: float  # monotonic


@dataclass(slots=True)
class DeviceState:
    plan: Plan
    bulk: BulkSize
    tables: dict[str, TableCache]
    uptime: Uptime = field(default_factory=Uptime)
    last_good: LastGood | None = None
    usm: UsmPeer | None = None  # v3: the user's keys and the device's engine ID, boots and time
    used_at: float = field(default_factory=time.monotonic)

    @classmethod
    def create(cls, plan: Plan, max_repetitions: int) -> "DeviceState":
        return cls(plan, BulkSize(max_repetitions), {table.name: TableCache() for table in plan.tables})
