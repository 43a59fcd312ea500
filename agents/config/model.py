"""Typed, immutable configuration of the agent. Built once by `agents.config.load`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from agents.config.types import Duration

IpProtocol = Literal["ip4", "ip6"]

DEFAULT_LISTEN = "0.0.0.0:9855"


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every config section: unknown keys are errors, values never change after load."""


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


class RawAgentConfig(_Strict):
    """The file's shape; modules are decoded one by one (see loader) so errors keep their key."""

    agent: AgentIdentity
    listen: str = DEFAULT_LISTEN
    defaults: Defaults = Defaults()
    max_concurrent_probes: int = 500
    modules: dict[str, dict[str, Any]] = {}
    targets: list[TargetConfig] = []


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

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)
