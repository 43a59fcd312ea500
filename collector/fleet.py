"""Fleet management, collector side: render `templates:` into the config each agent is served, validate every
rendered config with the agent's own loader, and keep what was served and what each agent reports.

A template is a named probe set (fragments of the agent config: modules, targets, SNMP devices, SSH checks, host
collectors) with a selector (levels, districts, agency ids). Strings may hold variables `{{ agency.KEY }}`,
`{{ district.KEY }}` and `{{ agent.id }}`, filled from the inventory; `${ENV}` secret references are left as
they are, for the agent to resolve. Templates apply in file order: a later template's entry replaces an earlier
one of the same key or name. See docs/fleet.md.
"""

from __future__ import annotations

import hashlib
import re
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client.metrics_core import GaugeMetricFamily, Metric as Family
from prometheus_client.registry import Collector

from agents.catalog import config_from_sections
from foundation.config.base import ConfigContext, ConfigError, format_path, unresolved_references_hook
from foundation.config.yamlpos import Path, PositionedData
from foundation.httpserver import Request, Response
from foundation.fleet_protocol import HASH_HEADER, KEYED_SECTIONS, NAMED_SECTIONS, SERVED_SECTIONS, VERSION_HEADER, config_hash

if TYPE_CHECKING:
    from collector.config import CollectorConfig, InventoryAgent, RawCollectorConfig, Template, TemplateSelector

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's when present: ~10x faster for 200 agents
VARIABLE = re.compile(r"\{\{(.*?)\}\}")
VARIABLE_NAME = re.compile(r"^(agency|district|agent)\.([A-Za-z_][A-Za-z0-9_]*)$")
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUILTIN_AGENCY_VARS = ("id", "name", "district", "level")


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
    """Everything the config endpoint needs, derived from the collector config in one place (build_fleet), so a
    reload that swaps the config swaps it whole."""

    configs: Mapping[str, ServedConfig] = field(default_factory=lambda: types.MappingProxyType({}))  # by agent id
    tokens: Mapping[bytes, InventoryAgent] = field(default_factory=lambda: types.MappingProxyType({}))  # sha256(token) ->


def build_fleet(ctx: ConfigContext, raw: RawCollectorConfig, agents: list[InventoryAgent], tokens: dict[bytes, InventoryAgent]) -> Fleet:
    """Render and validate every agent's served config; a ConfigError names the template key and the agent."""
    district_vars = _check_districts(ctx, raw)
    _check_agency_vars(ctx, raw)
    _check_templates(ctx, raw)
    configs = {agent.id: _served_config(ctx, raw.templates, agent, district_vars) for agent in agents}
    return Fleet(types.MappingProxyType(configs), types.MappingProxyType(tokens))


def _check_districts(ctx: ConfigContext, raw: RawCollectorConfig) -> dict[str, dict[str, str]]:
    used = {agency.district for agency in raw.agencies}
    found: dict[str, dict[str, str]] = {}
    for index, district in enumerate(raw.districts):
        path: Path = ("districts", index)
        if district.id not in used:
            raise ctx.error(path + ("id",), f"no agency is in district {district.id!r}")
        if district.id in found:
            raise ctx.error(path + ("id",), f"duplicate district {district.id!r}")
        _check_var_names(ctx, district.vars, path + ("vars",), ("id",))
        found[district.id] = district.vars
    return found


def _check_agency_vars(ctx: ConfigContext, raw: RawCollectorConfig) -> None:
    for index, agency in enumerate(raw.agencies):
        _check_var_names(ctx, agency.vars, ("agencies", index, "vars"), BUILTIN_AGENCY_VARS)


def _check_var_names(ctx: ConfigContext, variables: dict[str, str], path: Path, builtin: tuple[str, ...]) -> None:
    for name in variables:
        if not VAR_NAME.match(name):
            raise ctx.error(path + (name,), f"invalid variable name {name!r}: letters, digits and '_'")
        if name in builtin:
            raise ctx.error(path + (name,), f"{name!r} is set from the inventory; pick another name")


def _check_templates(ctx: ConfigContext, raw: RawCollectorConfig) -> None:
    known = {"agencies": {agency.id for agency in raw.agencies}, "districts": {agency.district for agency in raw.agencies}}
    singular = {"agencies": "agency", "districts": "district"}
    names: dict[str, int] = {}
    for index, template in enumerate(raw.templates):
        path: Path = ("templates", index)
        if not template.name.strip():
            raise ctx.error(path + ("name",), "must not be empty")
        if template.name in names:
            raise ctx.error(path + ("name",), f"duplicate template name {template.name!r} (first in templates[{names[template.name]}])")
        names[template.name] = index
        for key, ids in known.items():
            for position, value in enumerate(getattr(template.select, key)):
                if value not in ids:
                    raise ctx.error(path + ("select", key, position), f"unknown {singular[key]} {value!r}")


def selects(selector: TemplateSelector, agent: InventoryAgent) -> bool:
    agency = agent.agency
    return (
        (not selector.levels or agency.level in selector.levels)
        and (not selector.districts or agency.district in selector.districts)
        and (not selector.agencies or agency.id in selector.agencies)
    )


def template_variables(agent: InventoryAgent, district_vars: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    agency = agent.agency
    builtin = {"id": agency.id, "name": agency.name, "district": agency.district, "level": agency.level}
    return {
        "agency": {**agency.vars, **builtin},
        "district": {**district_vars.get(agency.district, {}), "id": agency.district},
        "agent": {"id": agent.id},
    }


class _Renderer:
    """One agent's variables, substituted into template values; errors name the template key and the agent."""

    def __init__(self, ctx: ConfigContext, agent: InventoryAgent, variables: dict[str, dict[str, str]]) -> None:
        self.ctx, self.agent, self.variables = ctx, agent, variables

    def render(self, value: Any, path: Path) -> Any:
        if isinstance(value, str):
            return self._substitute(value, path)
        if isinstance(value, dict):
            return {key: self.render(item, path + (key,)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.render(item, path + (index,)) for index, item in enumerate(value)]
        return value

    def _substitute(self, text: str, path: Path) -> str:
        rendered = VARIABLE.sub(lambda match: self._value(match.group(1).strip(), path), text)
        if "{{" in rendered or "}}" in rendered:
            raise self.ctx.error(path, "unbalanced '{{' or '}}' in a template value")
        return rendered

    def _value(self, name: str, path: Path) -> str:
        match = VARIABLE_NAME.match(name)
        if match is None:
            raise self.ctx.error(path, f"invalid template variable {{{{ {name} }}}}: use agency.KEY, district.KEY or agent.id")
        scope, key = match.groups()
        value = self.variables[scope].get(key)
        if value is None:
            known = ", ".join(f"{scope}.{known}" for known in sorted(self.variables[scope]))
            raise self.ctx.error(path, f"unknown variable {{{{ {name} }}}} for agent {self.agent.id} (agency {self.agent.agency.id}); known: {known}")
        return value


def _served_config(ctx: ConfigContext, templates: list[Template], agent: InventoryAgent, district_vars: dict[str, dict[str, str]]) -> ServedConfig:
    renderer = _Renderer(ctx, agent, template_variables(agent, district_vars))
    parts: dict[str, Any] = {}  # section -> {key: (value, origin)} | [(entry, origin)] | (value, origin)
    applied = []
    for index, template in enumerate(templates):
        if not selects(template.select, agent):
            continue
        applied.append(template.name)
        for section in SERVED_SECTIONS:
            value = getattr(template, section)
            if value:
                origin: Path = ("templates", index, section)
                _add(parts, section, renderer.render(value, origin), origin)
    sections, origins = _assemble(parts)
    text = yaml.dump(sections, Dumper=SafeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    _validate(ctx, agent, sections, origins)
    return ServedConfig(agent.id, text, config_hash(text), tuple(applied))


def _add(parts: dict[str, Any], section: str, rendered: Any, origin: Path) -> None:
    if section in KEYED_SECTIONS:
        keyed = parts.setdefault(section, {})
        keyed.update({key: (value, origin + (key,)) for key, value in rendered.items()})
    elif section in NAMED_SECTIONS:
        named = parts.setdefault(section, [])
        for index, entry in enumerate(rendered):
            name = entry.get("name") if isinstance(entry, dict) else None
            named[:] = [kept for kept in named if name is None or not isinstance(kept[0], dict) or kept[0].get("name") != name]
            named.append((entry, origin + (index,)))
    else:
        parts[section] = (rendered, origin)


def _assemble(parts: dict[str, Any]) -> tuple[dict[str, Any], dict[Path, Path]]:
    """Plain served sections, and for each entry the template key it came from."""
    sections: dict[str, Any] = {}
    origins: dict[Path, Path] = {}
    for section, part in parts.items():
        if section in KEYED_SECTIONS:
            sections[section] = {key: value for key, (value, _) in part.items()}
            origins.update({(section, key): origin for key, (_, origin) in part.items()})
        elif section in NAMED_SECTIONS:
            sections[section] = [entry for entry, _ in part]
            origins.update({(section, index): origin for index, (_, origin) in enumerate(part)})
        else:
            sections[section], origins[(section,)] = part
    return sections, origins


def _validate(ctx: ConfigContext, agent: InventoryAgent, sections: dict[str, Any], origins: dict[Path, Path]) -> None:
    """The agent's own loader, on the served sections under this agent's identity; secret and file references
    are checked by form (the agent resolves them). The sections are checked as data, not re-read from the YAML
    text: safe_dump and the agent's safe loading round-trip plain data exactly."""
    identity = {"agent": {"id": agent.id, "agency": agent.agency.id}}
    check = ConfigContext(f"config served to agent {agent.id}", PositionedData(None), unresolved_references_hook)
    try:
        config_from_sections(check, {**identity, **sections})
    except ConfigError as exc:
        origin = origins.get(exc.path[:2]) or origins.get(exc.path[:1])
        rest = exc.path[2:] if exc.path[:2] in origins else exc.path[1:]
        where = origin + rest if origin is not None else ("templates",)
        key = format_path(exc.path) or "(top level)"
        raise ctx.error(where, f"rendered for agent {agent.id} (agency {agent.agency.id}), key {key}: {exc.message}") from None


CONFIG_PREFIX, CONFIG_SUFFIX = "/api/v1/agents/", "/config"


def config_path(agent_id: str) -> str:
    return f"{CONFIG_PREFIX}{agent_id}{CONFIG_SUFFIX}"


def serve_config(fleet: Fleet, fetches: FetchLog, request: Request) -> Response:
    """GET (or HEAD) /api/v1/agents/<id>/config: 401 without a known credential, whatever id the path names (the
    path is read only once the credential is known, so ids cannot be probed); 403 for another agent's id, known or
    not; 304 when If-None-Match matches the served ETag, else 200 with the YAML."""
    agent = authenticated_agent(fleet, request.headers.get("authorization"))
    if agent is None:
        return Response.text(401, "unauthorized: missing or unknown bearer token\n", **{"WWW-Authenticate": 'Bearer realm="netmon-collector"'})
    wanted = requested_agent(request.path)
    if wanted is None:
        return Response.text(404, f"no such path; agents fetch {config_path(agent.id)}\n")
    if wanted != agent.id:
        return Response.text(403, f"forbidden: agent {agent.id} may fetch only its own config\n")
    served = fleet.configs.get(agent.id)
    if served is None:
        return Response.text(404, f"no config for agent {agent.id}\n")
    fetches.record(agent.id, request.headers)
    headers = {"ETag": served.etag, "Cache-Control": "no-cache", HASH_HEADER: served.hash}
    if none_match(request.headers.get("if-none-match"), served.etag):
        return Response(304, b"", headers=headers)
    return Response(200, served.text.encode("utf-8"), "application/yaml; charset=utf-8", headers)


def authenticated_agent(fleet: Fleet, authorization: str | None) -> InventoryAgent | None:
    """The agent a bearer token belongs to. Every request costs the same: the digest of whatever came (empty if
    nothing) and one lookup of it."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    agent = fleet.tokens.get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest())  # as collector.config.token_digest
    return agent if scheme.lower() == "bearer" and token else None


def requested_agent(path: str) -> str | None:
    """The <id> of /api/v1/agents/<id>/config; None for any other path."""
    if not path.startswith(CONFIG_PREFIX) or not path.endswith(CONFIG_SUFFIX):
        return None
    agent_id = path[len(CONFIG_PREFIX):-len(CONFIG_SUFFIX)]
    return agent_id if agent_id and "/" not in agent_id else None


def none_match(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match by weak comparison, as RFC 9110 13.1.2 says for GET: W/"x" matches "x", and * matches (an
    authenticated agent always has a config)."""
    tags = [tag.strip().removeprefix("W/") for tag in (if_none_match or "").split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


@dataclass(slots=True)
class FetchRecord:
    """What an agent told the collector on its last config fetch."""

    time: float = 0.0  # unix seconds of the agent's last fetch; 0: never
    applied_hash: str = ""  # the served config the agent runs (from its X-Netmon-Config-Hash header)
    version: str = ""  # the agent's build version


class FetchLog:
    """Per agent, the last fetch. Runtime state: it outlives reloads (entries of removed agents are ignored)."""

    def __init__(self) -> None:
        self.records: dict[str, FetchRecord] = {}

    def record(self, agent_id: str, headers: Mapping[str, str]) -> None:
        """Only a fetch that reports the agent's state (every agent fetch sends its version, and the hash of the
        served config it runs if any) changes the record: a fetch by hand leaves what the agent reported."""
        applied_hash, version = headers.get(HASH_HEADER.lower()), headers.get(VERSION_HEADER.lower())
        if applied_hash is None and version is None:
            return
        record = self.records.setdefault(agent_id, FetchRecord())
        record.time = time.time()
        record.applied_hash = (applied_hash or "")[:64]
        record.version = (version or "")[:64]

    def get(self, agent_id: str) -> FetchRecord:
        return self.records.get(agent_id) or FetchRecord()


def under_management(served: ServedConfig, record: FetchRecord) -> bool:
    """Templates select the agent, or it fetches: only these agents are shown (a collector without templates adds nothing)."""
    return bool(served.templates) or record.time > 0


class FleetCollector(Collector):
    """Per inventory agent: the served hash, what the agent last reported (hash, version) and when it fetched."""

    def __init__(self, config: Callable[[], CollectorConfig], fetches: FetchLog) -> None:
        self._config = config
        self._fetches = fetches

    def collect(self) -> Iterator[Family]:
        identity = ["agency", "agent", "district", "level"]
        served = GaugeMetricFamily("netmon_fleet_config_served_info", "Hash of the config the collector serves to the agent", labels=identity + ["hash"])
        applied = GaugeMetricFamily(
            "netmon_fleet_config_applied_info", "Hash of the served config the agent reported running at its last fetch, and its version",
            labels=identity + ["hash", "version"],
        )
        current = GaugeMetricFamily("netmon_fleet_config_up_to_date", "1 if the agent's last fetch reported the config it is served now", labels=identity)
        last = GaugeMetricFamily("netmon_fleet_last_fetch_timestamp_seconds", "When the agent last fetched its config (0: never)", labels=identity)
        config = self._config()
        for agent in config.agents:
            labels = [value for _, value in agent.identity]
            served_config = config.fleet.configs.get(agent.id)
            record = self._fetches.get(agent.id)
            if served_config is None or not under_management(served_config, record):
                continue
            served.add_metric(labels + [served_config.hash], 1.0)
            if record.time:
                applied.add_metric(labels + [record.applied_hash, record.version], 1.0)
            current.add_metric(labels, 1.0 if record.applied_hash == served_config.hash else 0.0)
            last.add_metric(labels, record.time)
        yield from (served, applied, current, last)

