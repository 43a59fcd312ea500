"""cpu: seconds each CPU spent in each mode (node_exporter's cpu collector): on Linux from /proc/stat itself (as
psutil.cpu_times reads it, without its objects), elsewhere from psutil.cpu_times.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

SECONDS = Desc("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", "counter", ("cpu", "mode"))
GUEST_SECONDS = Desc(
    "node_cpu_guest_seconds_total", "Seconds the CPUs spent in guests (VMs) for each mode.", "counter", ("cpu", "mode")
)

# psutil field -> node_exporter mode. Windows names its interrupt and DPC time differently.
MODES = {
    "user": "user",
    "nice": "nice",
    "system": "system",
    "idle": "idle",
    "iowait": "iowait",
    "irq": "irq",
    "softirq": "softirq",
    "steal": "steal",
    "interrupt": "irq",
    "dpc": "softirq",
}
GUEST_MODES = {"guest": "user", "guest_nice": "nice"}
# /proc/stat's columns after "cpuN", in order (proc(5)); older kernels stop earlier
PROC_STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
PROC_STAT_PATH = "/proc/stat"


class CpuCollector:
    def collect(self) -> Iterator[Reading]:
        # psutil lists online CPUs in /proc/stat order, which is the CPU number unless a CPU is offline
        for index, times in enumerate(psutil.cpu_times(percpu=True)):
            cpu = str(index)
            for field, seconds in zip(times._fields, times):
                mode = MODES.get(field)
                if mode is not None:
                    yield SECONDS(seconds, cpu, mode)
                elif field in GUEST_MODES:
                    yield GUEST_SECONDS(seconds, cpu, GUEST_MODES[field])


class LinuxCpuCollector:
    def __init__(self, path: str = PROC_STAT_PATH) -> None:
        self._file = KeptFile(path)
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        columns = [(SECONDS, MODES[c]) if c in MODES else (GUEST_SECONDS, GUEST_MODES[c]) for c in PROC_STAT_COLUMNS]
        self._columns = tuple(columns)

    def collect(self) -> Iterator[Reading]:
        ticks = self._ticks
        for line in self._file.read().split(b"\n"):
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):  # "cpu " is the sum over all CPUs
                continue
            fields = line.split()
            cpu = fields[0][3:].decode()  # the number in "cpuN", as node_exporter labels it (an offline CPU has no line)
            for (desc, mode), value in zip(self._columns, fields[1:]):
                yield Reading(desc, (cpu, mode), int(value) / ticks)


def build(host: "HostConfig") -> CpuCollector | LinuxCpuCollector:
    return LinuxCpuCollector() if IS_LINUX else CpuCollector()


SPEC = CollectorSpec("cpu", build)
