"""netdev: bytes, packets, errors and drops per network device (node_exporter's netdev collector): on Linux from
/proc/net/dev itself (what psutil.net_io_counters reads there, without its objects), elsewhere from psutil.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading, excluded, exclusion

if TYPE_CHECKING:
    from agents.host.config import HostConfig


def _statistic(name: str) -> Desc:
    return Desc(f"node_network_{name}_total", f"Network device statistic {name}.", "counter", ("device",))


# psutil counter field -> node_exporter statistic (legacy names: errs, drop)
STATISTICS = {
    "bytes_recv": _statistic("receive_bytes"),
    "packets_recv": _statistic("receive_packets"),
    "errin": _statistic("receive_errs"),
    "dropin": _statistic("receive_drop"),
    "bytes_sent": _statistic("transmit_bytes"),
    "packets_sent": _statistic("transmit_packets"),
    "errout": _statistic("transmit_errs"),
    "dropout": _statistic("transmit_drop"),
}


# psutil field -> its column in /proc/net/dev after "name:" (8 receive columns, then 8 transmit columns)
NET_DEV_COLUMNS = {"bytes_recv": 0, "packets_recv": 1, "errin": 2, "dropin": 3,
                   "bytes_sent": 8, "packets_sent": 9, "errout": 10, "dropout": 11}
NET_DEV_PATH = "/proc/net/dev"


class NetdevCollector:
    def __init__(self, device_exclude: str | None) -> None:
        self._exclude = exclusion(device_exclude, None)

    def collect(self) -> Iterator[Reading]:
        # nowrap=False: raw kernel counters as node_exporter reports them, and no psutil-global wrap cache
        for device, counters in psutil.net_io_counters(pernic=True, nowrap=False).items():
            if excluded(self._exclude, device):
                continue
            for field, desc in STATISTICS.items():
                yield desc(getattr(counters, field), device)


class LinuxNetdevCollector:
    def __init__(self, device_exclude: str | None, path: str = NET_DEV_PATH) -> None:
        self._exclude = exclusion(device_exclude, None)
        self._file = KeptFile(path)
        self._columns = tuple((desc, NET_DEV_COLUMNS[field]) for field, desc in STATISTICS.items())

    def collect(self) -> Iterator[Reading]:
        for line in self._file.read().decode().splitlines()[2:]:  # two header lines
            name, _, counters = line.rpartition(":")
            device = name.strip()
            if excluded(self._exclude, device):
                continue
            fields = counters.split()
            for desc, column in self._columns:
                yield Reading(desc, (device,), float(fields[column]))


def build(host: "HostConfig") -> NetdevCollector | LinuxNetdevCollector:
    if IS_LINUX:
        return LinuxNetdevCollector(host.netdev.device_exclude)
    return NetdevCollector(host.netdev.device_exclude)


SPEC = CollectorSpec("netdev", build)
