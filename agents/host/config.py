"""The `host:` section: node_exporter-named metrics of the machine the agent runs on (docs/host.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation.config.base import Strict
from foundation.config.types import Duration

if TYPE_CHECKING:
    from agents.config.model import AgentConfig


class HostFilesystem(Strict):
    mount_points_exclude: str | None = None  # regex; None = node_exporter's default (agents/host/filesystem.py)
    fs_types_exclude: str | None = None  # regex; None = node_exporter's default
    mount_timeout: Duration = Duration(0.5)  # longest wait for a statfs (a hung NFS mount) per scrape


class HostDevices(Strict):
    device_exclude: str | None = None  # regex; None = node_exporter's default for that collector


class HostConfig(Strict):
    """`host:` node_exporter-named metrics of the machine the agent runs on (docs/host.md)."""

    enabled: bool = False
    collectors: dict[str, bool] = {}  # collector name -> on/off, over its default (agents/host/__init__.py)
    filesystem: HostFilesystem = HostFilesystem()
    diskstats: HostDevices = HostDevices()
    netdev: HostDevices = HostDevices()


class HostSections(Strict):
    """The top-level key the host domain owns."""

    host: HostConfig = HostConfig()


def host_config(config: "AgentConfig") -> HostConfig:
    return config.section(HostSections).host
