"""diskstats: bytes, operations and busy time per block device (node_exporter's diskstats collector): on Linux
from /proc/diskstats itself (sectors of 512 bytes, times in ms; what psutil.disk_io_counters reads there, without
its objects), elsewhere from psutil.disk_io_counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading, excluded, exclusion

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


# psutil field -> its column in /proc/diskstats, counted from the device name (Documentation/admin-guide/iostats.rst)
DISKSTATS_COLUMNS = {
    "read_count": 1, "read_merged_count": 2, "read_bytes": 3, "read_time": 4,
    "write_count": 5, "write_merged_count": 6, "write_bytes": 7, "write_time": 8, "busy_time": 10,
}
SECTOR_BYTES = 512.0  # the kernel counts 512-byte sectors whatever the device's sector size
DISKSTATS_PATH = "/proc/diskstats"


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


class LinuxDiskstatsCollector:
    def __init__(self, device_exclude: str | None, path: str = DISKSTATS_PATH) -> None:
        self._exclude = exclusion(device_exclude, DEFAULT_DEVICE_EXCLUDE)
        self._file = KeptFile(path)
        self._columns = tuple(
            (desc, DISKSTATS_COLUMNS[field], SECTOR_BYTES if field.endswith("_bytes") else multiplier)
            for field, (desc, multiplier) in FIELDS.items()
        )

    def collect(self) -> Iterator[Reading]:
        for line in self._file.read().decode().splitlines():
            fields = line.split()[2:]  # major, minor, then the name and its counters
            if len(fields) < 12 or excluded(self._exclude, fields[0]):
                continue  # fewer columns: a partition line of a 2.6.25 kernel
            device = (fields[0],)
            for desc, column, multiplier in self._columns:
                yield Reading(desc, device, int(fields[column]) * multiplier)


def build(host: "HostConfig") -> DiskstatsCollector | LinuxDiskstatsCollector:
    if IS_LINUX:
        return LinuxDiskstatsCollector(host.diskstats.device_exclude)
    return DiskstatsCollector(host.diskstats.device_exclude)


SPEC = CollectorSpec("diskstats", build, available=lambda: hasattr(psutil, "disk_io_counters"))
