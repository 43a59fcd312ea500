"""Fleet templates rendered into the config each agent is served, and every rendered config validated by the
agent program (collector/agent_check.py), at every load of the collector config (docs/fleet.md).

A template is a named probe set (fragments of the agent config: modules, targets, SNMP devices, SSH checks, host
collectors) with a selector (levels, districts, agency ids). Strings may hold variables `{{ agency.KEY }}`,
`{{ district.KEY }}` and `{{ agent.id }}`, filled from the inventory; `${ENV}` secret references are left as
they are, for the agent to resolve. Templates apply in file order: a later template's entry replaces an earlier
one of the same key or name.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Any

import yaml

from collector.agent_check import AgentCheck, AgentCheckError
from collector.config_model import Fleet, InventoryAgent, RawCollectorConfig, ServedConfig, Template, TemplateSelector
from foundation.config.base import ConfigContext, ConfigError, format_path
from foundation.config.yamlpos import Path
from foundation.fleet_protocol import KEYED_SECTIONS, NAMED_SECTIONS, SERVED_SECTIONS, Rejection, config_hash

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's when present: ~10x faster for 200 agents
VARIABLE = re.compile(r"\{\{(.*?)\}\}")
VARIABLE_NAME = re.compile(r"^(agency|district|agent)\.([A-Za-z_][A-Za-z0-9_]*)$")
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUILTIN_AGENCY_VARS = ("id", "name", "district", "level")


@dataclass(frozen=True, slots=True)
class Rendered:
    """One agent's served sections, before they become YAML."""

    sections: dict[str, Any]
    origins: dict[Path, Path]  # (section,) or (section, key or index) -> the template key it came from
    templates: tuple[str, ...]  # the templates that selected the agent, in order


def build_fleet(ctx: ConfigContext, raw: RawCollectorConfig, agents: list[InventoryAgent], tokens: dict[bytes, InventoryAgent]) -> Fleet:
    """Render and validate every agent's served config; a ConfigError names the template key and the agent."""
    district_vars = _check_districts(ctx, raw)
    _check_agency_vars(ctx, raw)
    _check_templates(ctx, raw)
    if not raw.templates:  # every agent is served {}: nothing to render or check
        configs = {agent.id: _served_config(agent.id, Rendered({}, {}, ())) for agent in agents}
    else:
        configs = _rendered_and_checked(ctx, raw.templates, agents, district_vars)
    return Fleet(types.MappingProxyType(configs), types.MappingProxyType(tokens))


def _rendered_and_checked(
    ctx: ConfigContext, templates: list[Template], agents: list[InventoryAgent], district_vars: dict[str, dict[str, str]]
) -> dict[str, ServedConfig]:
    """Served configs by agent id. The agent program checks them (secret and file references by form: the agent
    resolves them) while their YAML is written; an empty one adds nothing to an agent's file and is not sent.
    They are checked as data, not re-read from the YAML text: safe_dump and the agent's safe loading round-trip
    plain data exactly. The first agent (in inventory order) whose config is refused fails the load."""
    try:
        with AgentCheck() as check:
            rendered = {agent.id: _render(ctx, templates, agent, district_vars) for agent in agents}
            check.submit(_to_check(agents, rendered))
            configs = {agent_id: _served_config(agent_id, one) for agent_id, one in rendered.items()}
            verdicts = check.verdicts()
    except AgentCheckError as exc:
        raise ctx.error(("templates",), f"cannot check the served configs: {exc}") from None
    for agent in agents:
        rejection = verdicts.get(agent.id)
        if rejection is not None:
            raise _rejected(ctx, agent, rejection, rendered[agent.id].origins)
    return configs


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


def _render(ctx: ConfigContext, templates: list[Template], agent: InventoryAgent, district_vars: dict[str, dict[str, str]]) -> Rendered:
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
    return Rendered(sections, origins, tuple(applied))


def _served_config(agent_id: str, rendered: Rendered) -> ServedConfig:
    text = yaml.dump(rendered.sections, Dumper=SafeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return ServedConfig(agent_id, text, config_hash(text), rendered.templates)


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


def _to_check(agents: list[InventoryAgent], rendered: dict[str, Rendered]) -> dict[str, dict[str, Any]]:
    """Agent id -> its served sections under its identity, for the agents served anything."""
    return {
        agent.id: {"agent": {"id": agent.id, "agency": agent.agency.id}, **rendered[agent.id].sections}
        for agent in agents
        if rendered[agent.id].sections
    }


def _rejected(ctx: ConfigContext, agent: InventoryAgent, rejection: Rejection, origins: dict[Path, Path]) -> ConfigError:
    """The error at the template key the refused entry came from, naming the agent and the key in its config."""
    path = rejection.path
    origin = origins.get(path[:2]) or origins.get(path[:1])
    rest = path[2:] if path[:2] in origins else path[1:]
    where = origin + rest if origin is not None else ("templates",)
    key = format_path(path) or "(top level)"
    return ctx.error(where, f"rendered for agent {agent.id} (agency {agent.agency.id}), key {key}: {rejection.message}")
