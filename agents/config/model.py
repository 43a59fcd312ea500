"""Typed, immutable configuration of the agent. Built once by `agents.config.load`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from foundation.config.base import Strict as _Strict
from foundation.config.remote_write import PushConfig, PushTls
from foundation.config.types import Duration, SecretFile, SecretRef
from agents.ssh.config import SshCheckConfig, SshHostConfig
from agents.snmp.schema import SnmpDevice

IpProtocol = Literal["ip4", "ip6"]

DEFAULT_LISTEN = "0.0.0.0:9855"


class AgentIdentity(_Strict):
    id: str
    agency: str
    name: str = ""  # the agency's human name, UTF-8 (Vietnamese)
    labels: dict[str, str] = {}


class Defaults(_Strict):
    interval: Duration = Duration(30)
    timeout: Duration = Duration(10)


class TargetConfig(_Strict):
    name: str
    address: str
    module: str
    interval: Duration | None = None
    labels: dict[str, str] = {}
    enabled: bool = True
    all_addresses: bool = False  # probe every A/AAAA the name resolves to, each with label `ip`


class HostFilesystem(_Strict):
    mount_points_exclude: str | None = None  # regex; None = node_exporter's default (agents/host/filesystem.py)
    fs_types_exclude: str | None = None  # regex; None = node_exporter's default
    mount_timeout: Duration = Duration(0.5)  # longest wait for a statfs (a hung NFS mount) per scrape


class HostDevices(_Strict):
    device_exclude: str | None = None  # regex; None = node_exporter's default for that collector


class HostConfig(_Strict):
    """`host:` node_exporter-named metrics of the machine the agent runs on (docs/host.md)."""

    enabled: bool = False
    collectors: dict[str, bool] = {}  # collector name -> on/off, over its default (agents/host/__init__.py)
    filesystem: HostFilesystem = HostFilesystem()
    diskstats: HostDevices = HostDevices()
    netdev: HostDevices = HostDevices()


class FleetConfig(_Strict):
    """`fleet:` fetch probe sets from the collector's templates and merge them with this file (docs/fleet.md)."""

    url: str  # the collector's base URL, e.g. https://collector.example:9856
    cache_file: str  # the last good served config, written atomically; the agent starts from it when offline
    bearer_token: SecretRef | None = None  # this agent's credential at the collector (a push agent's push token)
    bearer_token_file: SecretFile | None = None
    tls: PushTls = PushTls()  # ca_file: the CA bundle the collector's certificate must chain to
    refresh_interval: Duration = Duration(60)
    timeout: Duration = Duration(10)  # one fetch, connect to the whole body

    def validate(self) -> None:
        """Raise ValueError("key: message")."""
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"url: expected http(s)://HOST[:PORT], got {self.url!r}")
        if url.username is not None or url.password is not None:
            raise ValueError("url: no credentials in the URL (it is logged); use bearer_token or bearer_token_file")
        if (self.bearer_token is None) == (self.bearer_token_file is None):
            raise ValueError("bearer_token: exactly one of bearer_token (${ENV}) and bearer_token_file is needed")
        if url.scheme == "http" and self.tls != PushTls():
            raise ValueError("tls: TLS settings need an https:// url")
        if self.refresh_interval <= 0 or self.timeout <= 0:
            raise ValueError(f"{'timeout' if self.timeout <= 0 else 'refresh_interval'}: must be greater than 0")
        if not self.cache_file:
            raise ValueError("cache_file: must not be empty")


class RawAgentConfig(_Strict):
    """The file's shape; modules are decoded one by one (see loader) so errors keep their key."""

    agent: AgentIdentity
    listen: str = DEFAULT_LISTEN
    defaults: Defaults = Defaults()
    max_concurrent_probes: int = 500
    modules: dict[str, dict[str, Any]] = {}
    targets: list[TargetConfig] = []
    push: PushConfig | None = None
    host: HostConfig = HostConfig()
    ssh_hosts: dict[str, SshHostConfig] = {}  # servers without an agent, checked over SSH (docs/ssh.md)
    ssh_checks: list[SshCheckConfig] = []  # expanded into targets of the ssh prober by the loader
    # snmp_auths and snmp_profiles are decoded entry by entry (agents/snmp/targets.py) so errors keep their key
    snmp_auths: dict[str, dict[str, Any]] = {}  # v1/v2c communities and v3 users, secrets by reference (docs/snmp.md)
    snmp_profiles: dict[str, dict[str, Any]] = {}  # custom numeric-OID profiles, next to the built-in ones
    snmp_devices: list[SnmpDevice] = []  # expanded into targets of the snmp prober by the loader
    snmp_max_concurrent_polls: int = 32
    fleet: FleetConfig | None = None  # fetch more of this config from the collector (docs/fleet.md)


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    """A named prober setting, in the spirit of blackbox_exporter's modules."""

    name: str
    prober: str
    timeout: float
    preferred_ip_protocol: IpProtocol
    ip_protocol_fallback: bool
    settings: Any  # the prober's own settings struct


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    address: str
    module: ModuleConfig
    interval: float
    labels: tuple[tuple[str, str], ...]
    all_addresses: bool


@dataclass(frozen=True, slots=True)
class AgentConfig:
    source: str  # file path, for messages
    agent: AgentIdentity
    listen_host: str
    listen_port: int
    default_interval: float
    max_concurrent_probes: int
    modules: dict[str, ModuleConfig]
    targets: tuple[Target, ...]
    push: PushConfig | None = None
    host: HostConfig = HostConfig()
    fleet: FleetConfig | None = None

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)
