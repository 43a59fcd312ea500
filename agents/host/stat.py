"""stat: boot time, context switches and interrupts since boot (node_exporter's stat collector)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import CollectorSpec, Desc, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

BOOT_TIME = Desc("node_boot_time_seconds", "Node boot time, in unixtime.")
CONTEXT_SWITCHES = Desc("node_context_switches_total", "Total number of context switches.", "counter")
INTERRUPTS = Desc("node_intr_total", "Total number of interrupts serviced.", "counter")


class StatCollector:
    def collect(self) -> Iterator[Reading]:
        yield BOOT_TIME(psutil.boot_time())
        stats = psutil.cpu_stats()
        yield CONTEXT_SWITCHES(stats.ctx_switches)
        yield INTERRUPTS(stats.interrupts)


def build(host: "HostConfig") -> StatCollector:
    return StatCollector()


SPEC = CollectorSpec("stat", build)
