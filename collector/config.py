"""The collector's configuration: inventory of agencies and agents, ingest limits, TLS, remote_write out.

Parsed once into immutable objects with the agent's machinery (positions from foundation.config.yamlpos,
ConfigError with file:line: key: message, msgspec structs that refuse unknown keys, secrets only by
reference). Cross-checks (unknown agency, duplicate ids, a token shared by two agents) name the key too.
"""

from __future__ import annotations

import hashlib
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from foundation.config.base import ConfigContext, parse_listen, read_config_file, yaml_sections
from foundation.config.remote_write import PushConfig
from foundation.config.types import Duration, FilePath, Secret, SecretFile, SecretRef
from foundation.config.yamlpos import Path
from collector.fleet import Fleet, build_fleet

DEFAULT_LISTEN = "0.0.0.0:9856"
IDENTITY_LABELS = ("agency", "agent", "district", "level")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

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
    """A named probe set: fragments of the agent's config (agents/config/model.py RawAgentConfig), rendered
    per agent with {{ ... }} variables and validated by the agent's own loader (collector/fleet.py)."""

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
    def identity(self) -> tuple[tuple[str, str], ...]:
        """The identity labels, sorted by name; they overwrite whatever the agent sent."""
        agency = self.agency
        return (("agency", agency.id), ("agent", self.id), ("district", agency.district), ("level", agency.level))


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


def load_collector_config(path: str | FsPath) -> CollectorConfig:
    return parse_collector_config(read_config_file(path), str(path))


def parse_collector_config(text: str, file: str = "<config>") -> CollectorConfig:
    ctx, sections = yaml_sections(text, file, "'agencies' and 'agents'")
    raw: RawCollectorConfig = ctx.convert(sections, RawCollectorConfig, ())
    host, port = parse_listen(ctx, raw.listen, 9856)
    _check_positive(ctx, raw)
    _check_labels(ctx, raw.external_labels, ("external_labels",))
    agencies = _check_agencies(ctx, raw.agencies)
    agents = _build_agents(ctx, raw, agencies)
    _check_tls(ctx, raw.tls_server_config)
    _check_remote_write(ctx, raw.remote_write)
    # agents fetch their config with their push bearer_token, or (pull agents) their config_token
    fetch_tokens = {token_digest(token.reveal()): agent for agent in agents if (token := agent.token or agent.config_token)}
    fleet = build_fleet(ctx, raw, agents, fetch_tokens)
    _check_status_page(ctx, raw.status_page)
    return CollectorConfig(
        source=file,
        listen_host=host,
        listen_port=port,
        scrape_timeout=float(raw.defaults.scrape_timeout),
        ingest=raw.ingest,
        tls=raw.tls_server_config,
        external_labels=tuple(sorted(raw.external_labels.items())),
        agencies=tuple(raw.agencies),
        agents=tuple(agents),
        remote_write=tuple(raw.remote_write),
        fleet=fleet,
        status_page=raw.status_page,
        district_names=types.MappingProxyType({district.id: district.name.strip() or district.id for district in raw.districts}),
    )


def _check_positive(ctx: ConfigContext, raw: RawCollectorConfig) -> None:
    values: dict[Path, float] = {
        ("defaults", "interval"): raw.defaults.interval,
        ("defaults", "scrape_timeout"): raw.defaults.scrape_timeout,
        ("ingest", "max_body_bytes"): raw.ingest.max_body_bytes,
        ("ingest", "max_decompressed_bytes"): raw.ingest.max_decompressed_bytes,
        ("ingest", "max_samples_per_second"): raw.ingest.max_samples_per_second,
        ("ingest", "max_sample_age"): raw.ingest.max_sample_age,
        ("ingest", "max_sample_in_future"): raw.ingest.max_sample_in_future,
    }
    if raw.defaults.ttl is not None:
        values[("defaults", "ttl")] = raw.defaults.ttl
    for path, value in values.items():
        if value <= 0:
            raise ctx.error(path, "must be greater than 0")


def _check_labels(ctx: ConfigContext, labels: dict[str, str], path: Path) -> None:
    for name in labels:
        if not LABEL_NAME.match(name) or name.startswith("__"):
            raise ctx.error(path + (name,), f"invalid label name {name!r}")
        if name in IDENTITY_LABELS:
            raise ctx.error(path + (name,), f"label {name!r} is an identity label set from the inventory")


def _check_id(ctx: ConfigContext, value: str, index: int, seen: dict[str, int], section: str) -> None:
    path: Path = (section, index, "id")
    if not ID_PATTERN.match(value):
        raise ctx.error(path, f"invalid id {value!r}: lower-case letters, digits, '.', '_' and '-'")
    if value in seen:
        raise ctx.error(path, f"duplicate id {value!r} (first defined in {section}[{seen[value]}])")
    seen[value] = index


def _check_agencies(ctx: ConfigContext, agencies: list[Agency]) -> dict[str, Agency]:
    seen: dict[str, int] = {}
    for index, agency in enumerate(agencies):
        _check_id(ctx, agency.id, index, seen, "agencies")
        for key in ("name", "district"):
            if not getattr(agency, key).strip():
                raise ctx.error(("agencies", index, key), "must not be empty")
    return {agency.id: agency for agency in agencies}


def _build_agents(ctx: ConfigContext, raw: RawCollectorConfig, agencies: dict[str, Agency]) -> list[InventoryAgent]:
    seen: dict[str, int] = {}
    tokens: dict[bytes, str] = {}
    agents = []
    for index, entry in enumerate(raw.agents):
        path: Path = ("agents", index)
        _check_id(ctx, entry.id, index, seen, "agents")
        if entry.agency not in agencies:
            raise ctx.error(path + ("agency",), f"unknown agency {entry.agency!r}; define it under 'agencies'")
        token = _agent_token(ctx, entry, path)
        config_token = _config_token(ctx, entry, path)
        for key, secret in ((_given("bearer_token", entry), token), (_given("config_token", entry), config_token)):
            if secret is not None:
                digest = token_digest(secret.reveal())
                if digest in tokens:
                    raise ctx.error(path + (key,), f"the same credential is already bound to agent {tokens[digest]!r}")
                tokens[digest] = entry.id
        interval = float(entry.interval if entry.interval is not None else raw.defaults.interval)
        ttl = entry.ttl if entry.ttl is not None else raw.defaults.ttl
        ttl_seconds = float(ttl) if ttl is not None else 3 * interval
        if interval <= 0 or ttl_seconds <= 0:
            raise ctx.error(path + ("interval" if interval <= 0 else "ttl",), "must be greater than 0")
        agents.append(
            InventoryAgent(entry.id, agencies[entry.agency], entry.mode, entry.address, token, interval, ttl_seconds, config_token)
        )
    return agents


def _given(key: str, entry: AgentEntry) -> str:
    """The key a credential was given with: KEY, or KEY_file when that is the one set."""
    return f"{key}_file" if getattr(entry, f"{key}_file") is not None else key


def _config_token(ctx: ConfigContext, entry: AgentEntry, path: Path) -> Secret | None:
    token = entry.config_token or entry.config_token_file
    if token is None:
        return None
    if entry.mode == "push":
        raise ctx.error(path + (_given("config_token", entry),), "a push agent fetches its config with its bearer_token")
    if entry.config_token is not None and entry.config_token_file is not None:
        raise ctx.error(path + ("config_token",), "use only one of config_token and config_token_file")
    if not token.reveal():
        raise ctx.error(path + (_given("config_token", entry),), "the credential is empty")
    return token


def _agent_token(ctx: ConfigContext, entry: AgentEntry, path: Path) -> Secret | None:
    token = entry.bearer_token or entry.bearer_token_file
    if entry.mode == "pull":
        if not entry.address or not re.match(r"^[^\s:/]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$", entry.address):
            raise ctx.error(path + ("address",), "a pull agent needs address: HOST:PORT of its /metrics")
        if token is not None:
            raise ctx.error(path + (_given("bearer_token", entry),), "a pull agent has no push credential")
        return None
    if entry.address is not None:
        raise ctx.error(path + ("address",), "a push agent has no address (it is not scraped)")
    if entry.bearer_token is not None and entry.bearer_token_file is not None:
        raise ctx.error(path + ("bearer_token",), "use only one of bearer_token and bearer_token_file")
    if token is None:
        raise ctx.error(path, "a push agent needs bearer_token (${ENV}) or bearer_token_file")
    if not token.reveal():
        raise ctx.error(path + (_given("bearer_token", entry),), "the credential is empty")
    return token


def _check_status_page(ctx: ConfigContext, page: StatusPage) -> None:
    try:
        ZoneInfo(page.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ctx.error(("status_page", "timezone"), f"unknown time zone {page.timezone!r}; use an IANA name like Asia/Ho_Chi_Minh") from None
    if page.refresh < 1:
        raise ctx.error(("status_page", "refresh"), "must be at least 1s")


def _check_tls(ctx: ConfigContext, tls: TlsServerConfig | None) -> None:
    if tls is None:
        return
    # Python's ssl verifies every client certificate it asks for, so each mode but NoClientCert needs a CA
    if tls.client_auth_type != "NoClientCert" and tls.client_ca_file is None:
        raise ctx.error(("tls_server_config", "client_ca_file"), f"client_auth_type {tls.client_auth_type} needs client_ca_file")


def _check_remote_write(ctx: ConfigContext, outs: list[RemoteWriteOut]) -> None:
    queues: dict[str, int] = {}
    for index, out in enumerate(outs):
        try:
            out.validate()
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise ctx.error(("remote_write", index, *key.split(".")), message) from None
        if out.queue.directory in queues:
            raise ctx.error(("remote_write", index, "queue", "directory"), f"already used by remote_write[{queues[out.queue.directory]}]")
        queues[out.queue.directory] = index


def remote_write_name(out: RemoteWriteOut) -> str:
    return out.name or urlsplit(out.url).netloc


def describe(config: CollectorConfig) -> dict[str, Any]:
    """Counts for `check-config`'s one-line summary."""
    modes = [agent.mode for agent in config.agents]
    return {
        "agencies": len(config.agencies), "push": modes.count("push"), "pull": modes.count("pull"),
        "remote_write": len(config.remote_write),
    }
