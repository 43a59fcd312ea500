"""stat: boot time, context switches and interrupts since boot (node_exporter's stat collector): on Linux from
/proc/stat in one read (psutil.boot_time and cpu_stats read it once each), elsewhere from psutil."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading

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


class LinuxStatCollector:
    def __init__(self, path: str = "/proc/stat") -> None:
        self._file = KeptFile(path)
        self._descs = {b"btime": BOOT_TIME, b"ctxt": CONTEXT_SWITCHES, b"intr": INTERRUPTS}

    def collect(self) -> Iterator[Reading]:
        values = {}
        for line in self._file.read().split(b"\n"):
            key, _, rest = line.partition(b" ")
            if key in self._descs:  # intr's first number is the total; the per-IRQ counts follow
                values[key] = float(rest.split(b" ", 1)[0])
        for key, desc in self._descs.items():  # psutil's order: boot time, context switches, interrupts
            yield Reading(desc, (), values[key])


def build(host: "HostConfig") -> StatCollector | LinuxStatCollector:
    return LinuxStatCollector() if IS_LINUX else StatCollector()


SPEC = CollectorSpec("stat", build)
