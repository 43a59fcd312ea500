"""netdev: bytes, packets, errors and drops per network device (node_exporter's netdev collector),
from psutil.net_io_counters, which reads /proc/net/dev on Linux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import CollectorSpec, Desc, Reading, excluded, exclusion

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


def build(host: "HostConfig") -> NetdevCollector:
    return NetdevCollector(host.netdev.device_exclude)


SPEC = CollectorSpec("netdev", build)
