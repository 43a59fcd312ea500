"""diskstats: bytes, operations and busy time per block device (node_exporter's diskstats collector),
from psutil.disk_io_counters, which reads /proc/diskstats on Linux (sectors of 512 bytes, times in ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import CollectorSpec, Desc, Reading, excluded, exclusion

if TYPE_CHECKING:
    from agents.host.config import HostConfig

# node_exporter's default: skip RAM disks, loop devices, floppies and partitions of whole disks
DEFAULT_DEVICE_EXCLUDE = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"


def _counter(name: str, help: str) -> Desc:
    return Desc(f"node_disk_{name}", help, "counter", ("device",))


# psutil field -> (desc, multiplier to node_exporter's unit); fields a platform lacks are skipped
FIELDS = {
    "read_bytes": (_counter("read_bytes_total", "The total number of bytes read successfully."), 1.0),
    "write_bytes": (_counter("written_bytes_total", "The total number of bytes written successfully."), 1.0),
    "read_count": (_counter("reads_completed_total", "The total number of reads completed successfully."), 1.0),
    "write_count": (_counter("writes_completed_total", "The total number of writes completed successfully."), 1.0),
    "read_time": (_counter("read_time_seconds_total", "The total number of seconds spent by all reads."), 0.001),
    "write_time": (_counter("write_time_seconds_total", "This is the total number of seconds spent by all writes."), 0.001),
    "read_merged_count": (_counter("reads_merged_total", "The total number of reads merged."), 1.0),
    "write_merged_count": (_counter("writes_merged_total", "The number of writes merged."), 1.0),
    "busy_time": (_counter("io_time_seconds_total", "Total seconds spent doing I/Os."), 0.001),
}


class DiskstatsCollector:
    def __init__(self, device_exclude: str | None) -> None:
        self._exclude = exclusion(device_exclude, DEFAULT_DEVICE_EXCLUDE)

    def collect(self) -> Iterator[Reading]:
        # None when the OS keeps no disk counters (Windows with `diskperf -N`)
        per_disk = psutil.disk_io_counters(perdisk=True, nowrap=False) or {}
        for device, counters in per_disk.items():
            if excluded(self._exclude, device):
                continue
            for field, (desc, multiplier) in FIELDS.items():
                value = getattr(counters, field, None)
                if value is not None:
                    yield desc(value * multiplier, device)


def build(host: "HostConfig") -> DiskstatsCollector:
    return DiskstatsCollector(host.diskstats.device_exclude)


SPEC = CollectorSpec("diskstats", build, available=lambda: hasattr(psutil, "disk_io_counters"))
