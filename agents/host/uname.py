"""uname: node_uname_info, the labels dashboard 1860 selects hosts by (node_exporter's uname collector)."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Iterator

from agents.host.base import IS_LINUX, CollectorSpec, Desc, Reading, read_file

if TYPE_CHECKING:
    from agents.host.config import HostConfig

DOMAINNAME_PATH = "/proc/sys/kernel/domainname"
INFO = Desc(
    "node_uname_info",
    "Labeled system information as provided by the uname system call.",
    labels=("sysname", "release", "version", "machine", "nodename", "domainname"),
)


def domainname() -> str:
    """The NIS domain name uname(2) reports on Linux; "(none)" when unset or elsewhere."""
    if not IS_LINUX:
        return "(none)"
    try:
        return read_file(DOMAINNAME_PATH).decode("utf-8", "replace").strip() or "(none)"
    except OSError:
        return "(none)"


def uname_values() -> tuple[str, str, str, str, str]:
    """sysname, release, version, machine, nodename; read each time, as the host name can change."""
    if hasattr(os, "uname"):
        posix = os.uname()
        return posix.sysname, posix.release, posix.version, posix.machine, posix.nodename
    system = platform.uname()  # Windows; cached by platform, which is fine for what Windows reports
    return system.system, system.release, system.version, system.machine, system.node


class UnameCollector:
    def collect(self) -> Iterator[Reading]:
        yield INFO(1, *uname_values(), domainname())


def build(host: "HostConfig") -> UnameCollector:
    return UnameCollector()


SPEC = CollectorSpec("uname", build)
