"""The collector's configuration: inventory of agencies and agents, ingest limits, TLS, remote_write out.

Parsed once into immutable objects with the agent's machinery (positions from foundation.config.yamlpos,
ConfigError with file:line: key: message, msgspec structs that refuse unknown keys, secrets only by
reference). Cross-checks (unknown agency, duplicate ids, a token shared by two agents) name the key too. The
types are in collector/config_model.py; the configs served to agents are rendered by collector/templates.py.
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path as FsPath
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.config_model import (
    Agency,
    AgentEntry,
    CollectorConfig,
    InventoryAgent,
    RawCollectorConfig,
    RemoteWriteOut,
    StatusPage,
    TlsServerConfig,
    token_digest,
)
from collector.templates import build_fleet
from foundation.config.base import ConfigContext, parse_listen, read_config_file, yaml_sections
from foundation.config.types import Secret
from foundation.config.yamlpos import Path

IDENTITY_LABELS = ("agency", "agent", "district", "level")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


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
    if raw.shard is not None:
        fleet = dataclasses.replace(fleet, unknown_token_note=_shard_note(ctx, raw))
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


def _shard_note(ctx: ConfigContext, raw: RawCollectorConfig) -> str:
    """What a shard's 401 adds: this shard's name and where every shard is (agents learn theirs from shards.yml)."""
    shard = raw.shard
    assert shard is not None
    names = [peer.name for peer in shard.shards]
    if shard.name not in names:
        raise ctx.error(("shard", "name"), f"{shard.name!r} is not among shard.shards: {', '.join(names)}")
    if raw.external_labels.get("shard") != shard.name:
        raise ctx.error(("external_labels",), f"a shard labels its series shard: {shard.name} (shards are not replicas)")
    for index, peer in enumerate(shard.shards):
        if not re.match(r"^https?://[^\s/]+$", peer.url.rstrip("/")):
            raise ctx.error(("shard", "shards", index, "url"), f"expected http(s)://HOST[:PORT], got {peer.url!r}")
    where = ", ".join(f"{peer.name} {peer.url}" for peer in shard.shards)
    return f"this is {shard.name} of {len(names)}; shards: {where}"  # short: agents log 200 characters of a refusal


def _check_positive(ctx: ConfigContext, raw: RawCollectorConfig) -> None:
    values: dict[Path, float] = {
        ("defaults", "interval"): raw.defaults.interval,
        ("defaults", "scrape_timeout"): raw.defaults.scrape_timeout,
        ("ingest", "max_body_bytes"): raw.ingest.max_body_bytes,
        ("ingest", "max_decompressed_bytes"): raw.ingest.max_decompressed_bytes,
        ("ingest", "max_samples_per_second"): raw.ingest.max_samples_per_second,
        ("ingest", "first_sight_share"): raw.ingest.first_sight_share,
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
