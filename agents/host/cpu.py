"""cpu: seconds each CPU spent in each mode (node_exporter's cpu collector), from psutil.cpu_times."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import CollectorSpec, Desc, Reading

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


def build(host: "HostConfig") -> CpuCollector:
    return CpuCollector()


SPEC = CollectorSpec("cpu", build)
