"""Host collectors: the table of node_exporter-style collectors, name -> spec, and the `host:` section they run by.

Adding a collector is one file here, its test, and one line in this table. Which ones run is the
config's `host.collectors` (name: true/false) over each spec's default, like node_exporter's
--collector.<name> / --no-collector.<name> flags. The section is registered in agents/catalog.py.
"""

from __future__ import annotations

import re
from typing import Mapping

from agents.config.model import Target
from agents.config.sections import SectionContext, SectionSpec
from agents.host import clock, cpu, diskstats, filesystem, loadavg, meminfo, netclass, netdev, stat, uname
from agents.host.base import CollectorSpec
from agents.host.config import HostConfig, HostSections

COLLECTORS: dict[str, CollectorSpec] = {
    spec.name: spec
    for spec in (
        cpu.SPEC,
        diskstats.SPEC,
        filesystem.SPEC,
        loadavg.SPEC,
        meminfo.SPEC,
        netclass.SPEC,
        netdev.SPEC,
        stat.SPEC,
        clock.SPEC,
        uname.SPEC,
    )
}


def enabled_collectors(host: HostConfig, table: Mapping[str, CollectorSpec] = COLLECTORS) -> list[CollectorSpec]:
    return [spec for name, spec in table.items() if host.collectors.get(name, spec.enabled_by_default)]


def validate_host(host: HostConfig) -> None:
    """Raise ValueError("key.path: message") for the first problem of a `host:` section."""
    for name in host.collectors:
        if name not in COLLECTORS:
            raise ValueError(f"collectors.{name}: unknown collector {name!r}; known collectors: {', '.join(sorted(COLLECTORS))}")
    patterns = {
        "filesystem.mount_points_exclude": host.filesystem.mount_points_exclude,
        "filesystem.fs_types_exclude": host.filesystem.fs_types_exclude,
        "diskstats.device_exclude": host.diskstats.device_exclude,
        "netdev.device_exclude": host.netdev.device_exclude,
    }
    for key, pattern in patterns.items():
        try:
            re.compile(pattern or "")
        except re.error as exc:
            raise ValueError(f"{key}: invalid regular expression {pattern!r}: {exc}") from None
    if host.filesystem.mount_timeout <= 0:
        raise ValueError("filesystem.mount_timeout: must be greater than 0")


def _check_section(keys: HostSections, context: SectionContext) -> list[Target]:
    context.ctx.check(lambda: validate_host(keys.host), ("host",))
    return []


SECTION = SectionSpec(HostSections, _check_section)
