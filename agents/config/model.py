"""Typed, immutable configuration of the agent: its own top-level keys and what the loader builds from them.

Domains that own top-level keys (ssh_*, snmp_*, host) declare them in their own package and register them
(agents/config/sections.py); nothing here knows them. Built once by the loader (agents/config/loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Mapping, TypeVar, cast
from urllib.parse import urlsplit

from foundation.config.base import Strict as _Strict
from foundation.config.remote_write import PushConfig, PushTls
from foundation.config.types import Duration, SecretFile, SecretRef

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


class AgentSections(_Strict):
    """The agent's own top-level keys. The loader adds the keys domains register (`RawAgentConfig`) and decodes
    each section, module and entry on its own, so every error in the file is reported with its key."""

    agent: AgentIdentity
    listen: str = DEFAULT_LISTEN
    defaults: Defaults = Defaults()
    max_concurrent_probes: int = 500
    modules: dict[str, dict[str, Any]] = {}
    targets: list[TargetConfig] = []
    push: PushConfig | None = None
    fleet: FleetConfig | None = None  # fetch more of this config from the collector (docs/fleet.md)


S = TypeVar("S")
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class ModuleConfig(Generic[S]):
    """A named prober setting, in the spirit of blackbox_exporter's modules; `settings` is the prober's own struct."""

    name: str
    prober: str
    timeout: float
    preferred_ip_protocol: IpProtocol
    ip_protocol_fallback: bool
    settings: S


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    address: str
    module: ModuleConfig[Any]
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
    modules: Mapping[str, ModuleConfig[Any]]
    targets: tuple[Target, ...]
    push: PushConfig | None = None
    fleet: FleetConfig | None = None
    sections: Mapping[type, Any] = field(default_factory=dict)  # a domain's keys struct -> its decoded keys

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def section(self, keys: type[K]) -> K:
        """The decoded top-level keys a domain registered (e.g. `host`), for the domain that runs with them."""
        return cast(K, self.sections[keys])
