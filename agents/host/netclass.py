"""netclass: operational state and MTU per network device (node_exporter's netclass collector).

On Linux the state is /sys/class/net/<device>/operstate, as node_exporter reads it: loopback's
operstate is "unknown", so node_network_up{device="lo"} is 0 there too. Elsewhere psutil's
interface flag (administratively up) is the closest figure.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, Reading, read_file

if TYPE_CHECKING:
    from agents.host.config import HostConfig

SYS_CLASS_NET = "/sys/class/net"

UP = Desc("node_network_up", "Value is 1 if operstate is 'up', 0 otherwise.", labels=("device",))
MTU = Desc("node_network_mtu_bytes", "Network device property: mtu_bytes", labels=("device",))


def _read(path: str) -> bytes | None:
    try:
        return read_file(path).strip()
    except OSError:  # a device that disappeared between listing and reading, or has no such attribute
        return None


class LinuxNetclassCollector:
    def __init__(self, root: str = SYS_CLASS_NET) -> None:
        self._root = root

    def collect(self) -> Iterator[Reading]:
        for device in sorted(os.listdir(self._root)):
            operstate = _read(f"{self._root}/{device}/operstate")
            if operstate is None:
                continue
            yield UP(operstate == b"up", device)
            mtu = _read(f"{self._root}/{device}/mtu")
            if mtu:
                yield MTU(int(mtu), device)


class PortableNetclassCollector:
    def collect(self) -> Iterator[Reading]:
        for device, stats in psutil.net_if_stats().items():
            yield UP(stats.isup, device)
            if stats.mtu:
                yield MTU(stats.mtu, device)


def build(host: "HostConfig") -> LinuxNetclassCollector | PortableNetclassCollector:
    return LinuxNetclassCollector() if IS_LINUX and os.path.isdir(SYS_CLASS_NET) else PortableNetclassCollector()


SPEC = CollectorSpec("netclass", build, available=lambda: IS_LINUX or hasattr(psutil, "net_if_stats"))
