"""time: the system clock and its time zone (node_exporter's time collector, minus clock sources)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from agents.host.base import CollectorSpec, Desc, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

NOW = Desc("node_time_seconds", "System time in seconds since epoch (1970).")
ZONE_OFFSET = Desc("node_time_zone_offset_seconds", "System time zone offset in seconds.", labels=("time_zone",))


class TimeCollector:
    def collect(self) -> Iterator[Reading]:
        now = time.time()
        local = time.localtime(now)
        yield NOW(now)
        yield ZONE_OFFSET(local.tm_gmtoff, local.tm_zone)


def build(host: "HostConfig") -> TimeCollector:
    return TimeCollector()


SPEC = CollectorSpec("time", build)
