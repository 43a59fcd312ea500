"""netclass: operational state and MTU per network device (node_exporter's netclass collector).

On Linux the state is /sys/class/net/<device>/operstate, as node_exporter reads it: loopback's
operstate is "unknown", so node_network_up{device="lo"} is 0 there too. Elsewhere psutil's
interface flag (administratively up) is the closest figure.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

SYS_CLASS_NET = "/sys/class/net"

UP = Desc("node_network_up", "Value is 1 if operstate is 'up', 0 otherwise.", labels=("device",))
MTU = Desc("node_network_mtu_bytes", "Network device property: mtu_bytes", labels=("device",))


MAX_KEPT_DEVICES = 64  # devices whose two files stay open between scrapes; more are opened and closed each scrape


def _read(file: KeptFile) -> bytes | None:
    try:
        return file.read().strip()
    except OSError:  # a device that disappeared between listing and reading, or has no such attribute
        return None


class LinuxNetclassCollector:
    def __init__(self, root: str = SYS_CLASS_NET) -> None:
        self._root = root
        self._files: dict[str, tuple[KeptFile, KeptFile]] = {}  # device -> its operstate and mtu files

    def collect(self) -> Iterator[Reading]:
        devices = sorted(os.listdir(self._root))
        for gone in self._files.keys() - set(devices):
            for file in self._files.pop(gone):
                file.close()
        for device in devices:
            operstate_file, mtu_file = self._device_files(device)
            operstate = _read(operstate_file)
            if operstate is None:
                continue
            yield UP(operstate == b"up", device)
            mtu = _read(mtu_file)
            if mtu:
                yield MTU(int(mtu), device)

    def _device_files(self, device: str) -> tuple[KeptFile, KeptFile]:
        files = self._files.get(device)
        if files is None:
            files = (KeptFile(f"{self._root}/{device}/operstate"), KeptFile(f"{self._root}/{device}/mtu"))
            if len(self._files) < MAX_KEPT_DEVICES:
                self._files[device] = files  # else read once and closed when dropped, after this scrape
        return files


class PortableNetclassCollector:
    def collect(self) -> Iterator[Reading]:
        for device, stats in psutil.net_if_stats().items():
            yield UP(stats.isup, device)
            if stats.mtu:
                yield MTU(stats.mtu, device)


def build(host: "HostConfig") -> LinuxNetclassCollector | PortableNetclassCollector:
    return LinuxNetclassCollector() if IS_LINUX and os.path.isdir(SYS_CLASS_NET) else PortableNetclassCollector()


SPEC = CollectorSpec("netclass", build, available=lambda: IS_LINUX or hasattr(psutil, "net_if_stats"))
