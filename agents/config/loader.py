"""Read an agent config file once into typed, immutable objects, or fail with file:line: key: reason."""

from __future__ import annotations

import functools
import re
import types
from pathlib import Path as FsPath
from typing import Any, Union

import msgspec

from agents.config.model import (
    AgentConfig,
    IpProtocol,
    ModuleConfig,
    RawAgentConfig,
    Target,
    TargetConfig,
)
from foundation.config.base import (  # noqa: F401  (ConfigError and ConfigContext: re-exported for the agent's modules)
    ConfigContext,
    ConfigError,
    check_interval,
    format_path,
    parse_listen,
    read_config_file,
    yaml_sections,
)
from foundation.config.types import Duration
from foundation.config.yamlpos import Path
from agents.host import validate_host
from agents.ssh.targets import build_ssh_targets
from agents.snmp.targets import build_snmp_targets

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = {"target", "module", "ip", "job", "instance", "le", "quantile", "reason", "phase"}
DEFAULT_PORT = 9855


def _module_type(name: str, settings: type) -> type:
    return msgspec.defstruct(
        f"{name.title()}Module",
        [
            ("timeout", Union[Duration, None], None),
            ("preferred_ip_protocol", IpProtocol, "ip4"),
            ("ip_protocol_fallback", bool, True),
            (name, settings, msgspec.field(default_factory=settings)),
        ],
        tag_field="prober",
        tag=name,
        forbid_unknown_fields=True,
        frozen=True,
        kw_only=True,
    )


@functools.cache
def _module_types() -> dict[str, type]:
    """Prober name -> module struct. Built on first use: probers import the config model, so the
    prober table cannot be imported while this package initializes."""
    from agents.probes.table import PROBERS

    return {name: _module_type(name, spec.settings) for name, spec in PROBERS.items()}


def load_config(path: str | FsPath) -> AgentConfig:
    return parse_config(read_config_file(path), str(path))


def parse_config(text: str, file: str = "<config>") -> AgentConfig:
    ctx, sections = yaml_sections(text, file, "at least an 'agent' section")
    return config_from_sections(ctx, sections)


def config_from_sections(ctx: ConfigContext, sections: dict[str, Any]) -> AgentConfig:
    """The typed config of already-parsed top-level sections (e.g. a local file merged with a served one)."""
    raw: RawAgentConfig = ctx.convert(sections, RawAgentConfig, ())
    _check_labels(ctx, raw.agent.labels, ("agent", "labels"))
    if raw.max_concurrent_probes < 1:
        raise ctx.error(("max_concurrent_probes",), "must be at least 1")
    host, port = parse_listen(ctx, raw.listen, DEFAULT_PORT)
    modules = {name: _build_module(ctx, name, body, raw.defaults.timeout) for name, body in raw.modules.items()}
    targets = _build_targets(ctx, raw, modules)
    targets += build_ssh_targets(ctx, raw, _check_labels)
    targets += build_snmp_targets(ctx, raw, _check_labels)
    ctx.check(lambda: validate_host(raw.host), ("host",))
    if raw.push is not None:
        ctx.check(raw.push.validate, ("push",))
    if raw.fleet is not None:
        ctx.check(raw.fleet.validate, ("fleet",))
    return AgentConfig(
        source=ctx.file,
        agent=raw.agent,
        listen_host=host,
        listen_port=port,
        default_interval=float(raw.defaults.interval),
        max_concurrent_probes=raw.max_concurrent_probes,
        modules=types.MappingProxyType(modules),  # type: ignore[arg-type]
        targets=tuple(targets),
        push=raw.push,
        host=raw.host,
        fleet=raw.fleet,
    )


def _build_module(ctx: ConfigContext, name: str, body: Any, default_timeout: float) -> ModuleConfig:
    path: Path = ("modules", name)
    if not isinstance(body, dict):
        raise ctx.error(path, "a module must be a mapping with at least 'prober'")
    prober = body.get("prober")
    module_types = _module_types()
    if prober is None:
        raise ctx.error(path, f"missing required key 'prober' (one of: {', '.join(sorted(module_types))})")
    if prober not in module_types:
        raise ctx.error(path + ("prober",), f"unknown prober {prober!r}; known probers: {', '.join(sorted(module_types))}")
    decoded = ctx.convert(body, module_types[prober], path)
    timeout = float(decoded.timeout) if decoded.timeout is not None else default_timeout
    if timeout <= 0:
        raise ctx.error(path + ("timeout",), "must be greater than 0")
    settings = getattr(decoded, prober)
    check = getattr(settings, "validate", None)
    if check is not None:
        try:
            check(timeout)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise ctx.error(path + (prober, key) if message else path + (prober,), message or key) from None
    return ModuleConfig(name, prober, timeout, decoded.preferred_ip_protocol, decoded.ip_protocol_fallback, settings)


def _build_targets(ctx: ConfigContext, raw: RawAgentConfig, modules: dict[str, ModuleConfig]) -> list[Target]:
    seen: dict[str, int] = {}
    targets = []
    for index, target in enumerate(raw.targets):
        path: Path = ("targets", index)
        if not target.name.strip():
            raise ctx.error(path + ("name",), "must not be empty")
        if target.name in seen:
            raise ctx.error(path + ("name",), f"duplicate target name {target.name!r} (first defined in targets[{seen[target.name]}])")
        seen[target.name] = index
        if target.module not in modules:
            known = ", ".join(sorted(modules)) or "none defined"
            raise ctx.error(path + ("module",), f"unknown module {target.module!r}; modules: {known}")
        _check_labels(ctx, target.labels, path + ("labels",))
        if not target.enabled:
            continue
        module = modules[target.module]
        interval = float(target.interval) if target.interval is not None else float(raw.defaults.interval)
        blame = path + ("interval",) if target.interval is not None else path + ("module",)
        check_interval(ctx, interval, module.timeout, f"module {module.name!r}", (path + ("interval",), ("modules", module.name, "timeout"), blame))
        targets.append(_make_target(target, module, interval, raw.agent.labels))
    return targets


def _make_target(target: TargetConfig, module: ModuleConfig, interval: float, agent_labels: dict[str, str]) -> Target:
    labels = {**agent_labels, **target.labels}
    return Target(target.name, target.address, module, interval, tuple(sorted(labels.items())), target.all_addresses)


def _check_labels(ctx: ConfigContext, labels: dict[str, str], path: Path) -> None:
    for name in labels:
        if not LABEL_NAME.match(name) or name.startswith("__"):
            raise ctx.error(path + (name,), f"invalid label name {name!r}: use letters, digits and '_', not starting with a digit or '__'")
        if name in RESERVED_LABELS:
            raise ctx.error(path + (name,), f"label name {name!r} is reserved by the agent")
