"""loadavg: node_load1, node_load5, node_load15 (node_exporter's loadavg collector).

On Windows psutil emulates the load average from the processor queue length, sampled by a thread
it starts on the first call; the first readings there are 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

LOADS = (
    Desc("node_load1", "1m load average."),
    Desc("node_load5", "5m load average."),
    Desc("node_load15", "15m load average."),
)


class LinuxLoadavgCollector:
    """/proc/loadavg kept open (os.getloadavg, which psutil calls, opens and closes it every time)."""

    def __init__(self, path: str = "/proc/loadavg") -> None:
        self._file = KeptFile(path)

    def collect(self) -> Iterator[Reading]:
        for desc, load in zip(LOADS, self._file.read().split()[:3]):
            yield Reading(desc, (), float(load))


class LoadavgCollector:
    def collect(self) -> Iterator[Reading]:
        for desc, load in zip(LOADS, psutil.getloadavg()):
            yield desc(load)


def build(host: "HostConfig") -> LoadavgCollector | LinuxLoadavgCollector:
    return LinuxLoadavgCollector() if IS_LINUX else LoadavgCollector()


SPEC = CollectorSpec("loadavg", build, available=lambda: hasattr(psutil, "getloadavg"))
