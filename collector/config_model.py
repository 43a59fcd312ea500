"""The collector config's shape and what a load makes of it: the raw sections (msgspec structs that refuse unknown
keys, secrets only by reference), the inventory agents, the configs served to them, and the immutable config the
running collector reads. Types only: collector/config.py loads them, collector/templates.py renders the fleet.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from foundation.config.remote_write import PushConfig
from foundation.config.types import Duration, FilePath, Secret, SecretFile, SecretRef

DEFAULT_LISTEN = "0.0.0.0:9856"
IDENTITY_NAMES = frozenset({"agency", "agent", "district", "level"})  # InventoryAgent.identity's label names

Level = Literal["province", "department", "district", "commune"]
ClientAuth = Literal[
    "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
]
TlsVersion = Literal["TLS12", "TLS13"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Unknown keys are errors; values never change after load."""


class Agency(_Strict):
    id: str  # short and stable, e.g. so-tttt, xa-my-tho: the `agency` label
    name: str  # human name, UTF-8 Vietnamese; only in netmon_agency_info and the status page
    district: str
    level: Level
    vars: dict[str, str] = {}  # template variables, e.g. gateway, lan_switch: {{ agency.gateway }} (docs/fleet.md)


class District(_Strict):
    """`districts:` a district's display name and the template variables its agencies share, e.g. router: {{ district.router }}."""

    id: str  # the `district` of agencies
    name: str = ""  # shown on the status page, UTF-8 (e.g. "Huyện Cái Bè"); default the id
    vars: dict[str, str] = {}


class StatusPage(_Strict):
    """The status page at `/`."""

    timezone: str = "Asia/Ho_Chi_Minh"  # IANA zone the page shows times in (with the zone named)
    language: Literal["vi", "en"] = "vi"  # default language; a reader may ask for the other with ?lang=en or ?lang=vi
    refresh: Duration = Duration(30)  # the page reloads itself this often


class TemplateSelector(_Strict):
    """Which agencies a template applies to: every key given must match (an empty selector matches all)."""

    levels: list[Level] = []
    districts: list[str] = []
    agencies: list[str] = []


class Template(_Strict):
    """A named probe set: fragments of the agent's config (its served sections), rendered per agent with
    {{ ... }} variables and checked by the agent program (collector/templates.py)."""

    name: str
    select: TemplateSelector = TemplateSelector()
    modules: dict[str, Any] = {}
    targets: list[Any] = []
    ssh_hosts: dict[str, Any] = {}
    ssh_checks: list[Any] = []
    snmp_auths: dict[str, Any] = {}
    snmp_profiles: dict[str, Any] = {}
    snmp_devices: list[Any] = []
    host: dict[str, Any] | None = None


class AgentEntry(_Strict):
    id: str
    agency: str
    mode: Literal["push", "pull"]
    address: str | None = None  # pull: HOST:PORT of the agent's /metrics
    bearer_token: SecretRef | None = None  # push: the credential bound to this agent
    bearer_token_file: SecretFile | None = None
    interval: Duration | None = None  # push cadence expected / scrape interval
    ttl: Duration | None = None  # silent this long = down (default 3 intervals)
    config_token: SecretRef | None = None  # pull: the credential it fetches its config with (push agents use bearer_token)
    config_token_file: SecretFile | None = None


class Defaults(_Strict):
    interval: Duration = Duration(15)
    ttl: Duration | None = None
    scrape_timeout: Duration = Duration(10)


class Ingest(_Strict):
    max_body_bytes: int = 16 << 20  # compressed request body (413 beyond)
    max_decompressed_bytes: int = 64 << 20  # announced snappy length (413 beyond)
    max_samples_per_second: int = 2_000_000  # all agents together; 429 with Retry-After beyond
    max_samples_per_second_per_agent: int | None = None  # one agent's share (default: twice an even share of the total)
    first_sight_share: float = 0.5  # of one core, for pushes that bring series not seen before (1 s burst); 429 with Retry-After beyond
    max_sample_age: Duration = Duration(31 * 86400)  # older samples are dropped, counted (VictoriaMetrics' default retention)
    max_sample_in_future: Duration = Duration(600)  # samples further ahead of the collector's clock are dropped, counted


class TlsServerConfig(_Strict):
    """exporter-toolkit's web.yml `tls_server_config` keys."""

    cert_file: FilePath
    key_file: FilePath
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: FilePath | None = None
    min_version: TlsVersion = "TLS12"


class RemoteWriteOut(PushConfig, kw_only=True):
    """Like the agent's `push:` (same sender, same durable queue), towards a TSDB."""

    name: str = ""  # label value for the self-metrics; defaults to the URL's host:port


class ShardPeer(_Strict):
    name: str  # shard-N
    url: str  # the base URL its agents push to and fetch their config from


class ShardSection(_Strict):
    """`shard:` written by `netmon-collector shard`: which shard this collector is, and every shard of the inventory,
    so an agent sent to the wrong one is told where the shards are (docs/deployment.md, "Sharding")."""

    name: str  # this shard; also its `shard` external label
    by: Literal["hash", "district"]  # how the inventory was split
    shards: list[ShardPeer]  # every shard, this one included, in order


class RawCollectorConfig(_Strict):
    listen: str = DEFAULT_LISTEN
    defaults: Defaults = Defaults()
    ingest: Ingest = Ingest()
    tls_server_config: TlsServerConfig | None = None
    external_labels: dict[str, str] = {}  # added to every series sent by remote_write out
    agencies: list[Agency] = []
    agents: list[AgentEntry] = []
    remote_write: list[RemoteWriteOut] = []
    districts: list[District] = []  # per-district display names and template variables
    templates: list[Template] = []  # probe sets served to agents (docs/fleet.md)
    status_page: StatusPage = StatusPage()
    shard: ShardSection | None = None  # set by `netmon-collector shard` in the configs it writes


@dataclass(frozen=True, slots=True)
class InventoryAgent:
    id: str
    agency: Agency
    mode: str
    address: str | None
    token: Secret | None
    interval: float
    ttl: float
    config_token: Secret | None = None  # a pull agent's credential for GET /api/v1/agents/<id>/config

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:  # names: IDENTITY_NAMES
        """The identity labels, sorted by name; they overwrite whatever the agent sent."""
        agency = self.agency
        return (("agency", agency.id), ("agent", self.id), ("district", agency.district), ("level", agency.level))


@dataclass(frozen=True, slots=True)
class ServedConfig:
    agent: str
    text: str  # YAML of the served sections; secret references stay references
    hash: str
    templates: tuple[str, ...]  # the templates that selected this agent, in order

    @property
    def etag(self) -> str:
        return f'"{self.hash}"'


@dataclass(frozen=True, slots=True)
class Fleet:
    """Everything the config endpoint needs, derived from the collector config in one place (templates.build_fleet), so a
    reload that swaps the config swaps it whole."""

    configs: Mapping[str, ServedConfig] = field(default_factory=lambda: types.MappingProxyType({}))  # by agent id
    tokens: Mapping[bytes, InventoryAgent] = field(default_factory=lambda: types.MappingProxyType({}))  # sha256(token) ->
    unknown_token_note: str = ""  # a shard's 401 names the shards, for an agent sent to the wrong one


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    source: str
    listen_host: str
    listen_port: int
    scrape_timeout: float
    ingest: Ingest
    tls: TlsServerConfig | None
    external_labels: tuple[tuple[str, str], ...]
    agencies: tuple[Agency, ...]
    agents: tuple[InventoryAgent, ...]
    remote_write: tuple[RemoteWriteOut, ...]
    fleet: Fleet = Fleet()  # the config each agent is served, rendered and validated at load
    status_page: StatusPage = StatusPage()
    district_names: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))  # id -> display name, in `districts:` order

    def agent_by_token(self) -> dict[bytes, InventoryAgent]:
        """sha256(token) -> agent: looking up a digest does not leak the token through timing."""
        return {token_digest(a.token.reveal()): a for a in self.agents if a.token is not None}


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
