"""loadavg: node_load1, node_load5, node_load15 (node_exporter's loadavg collector).

On Windows psutil emulates the load average from the processor queue length, sampled by a thread
it starts on the first call; the first readings there are 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import CollectorSpec, Desc, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

LOADS = (
    Desc("node_load1", "1m load average."),
    Desc("node_load5", "5m load average."),
    Desc("node_load15", "15m load average."),
)


class LoadavgCollector:
    def collect(self) -> Iterator[Reading]:
        for desc, load in zip(LOADS, psutil.getloadavg()):
            yield desc(load)


def build(host: "HostConfig") -> LoadavgCollector:
    return LoadavgCollector()


SPEC = CollectorSpec("loadavg", build, available=lambda: hasattr(psutil, "getloadavg"))
