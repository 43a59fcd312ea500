"""Read an agent config file once into typed, immutable objects, or fail with file:line: key: reason.

The loader knows the agent's own keys only. What probers exist and which top-level keys domains own comes from
the table it is built with (`AgentConfigSchema(probers, sections)`, see agents/catalog.py), so it imports no
prober and no domain.
"""

from __future__ import annotations

import types
from pathlib import Path as FsPath
from typing import Any, Iterable, Protocol, Sequence, Union

import msgspec

from agents.config.model import AgentConfig, AgentSections, IpProtocol, ModuleConfig, Target
from agents.config.sections import SectionContext, SectionSpec
from foundation.config.base import (
    ConfigContext,
    check_interval,
    parse_listen,
    read_config_file,
    yaml_sections,
)
from foundation.config.types import Duration
from foundation.config.yamlpos import Path

DEFAULT_PORT = 9855
RAW_DOC = (
    "The file's shape: the agent's own keys and those each domain registers. Modules are decoded one by one "
    "(see loader) so errors keep their key."
)


class ModuleKind(Protocol):
    """What the loader needs of a prober: the name `prober:` selects it by, and its settings struct."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> type: ...


class AgentConfigSchema:
    """The config's shape for one table of probers and sections, and the reading of a file into AgentConfig."""

    def __init__(self, probers: Iterable[ModuleKind], sections: Sequence[SectionSpec[Any]]) -> None:
        self.module_types: dict[str, type] = {prober.name: _module_type(prober.name, prober.settings) for prober in probers}
        self.sections = tuple(sections)
        self.raw_type = _raw_type(self.sections)

    def load(self, path: str | FsPath) -> AgentConfig:
        return self.parse(read_config_file(path), str(path))

    def parse(self, text: str, file: str = "<config>") -> AgentConfig:
        ctx, sections = yaml_sections(text, file, "at least an 'agent' section")
        return self.from_sections(ctx, sections)

    def from_sections(self, ctx: ConfigContext, sections: dict[str, Any]) -> AgentConfig:
        """The typed config of already-parsed top-level sections (e.g. a local file merged with a served one)."""
        raw = ctx.convert(sections, self.raw_type, ())
        context = SectionContext(ctx, raw.defaults, raw.agent.labels)
        context.check_labels(raw.agent.labels, ("agent", "labels"))
        if raw.max_concurrent_probes < 1:
            raise ctx.error(("max_concurrent_probes",), "must be at least 1")
        host, port = parse_listen(ctx, raw.listen, DEFAULT_PORT)
        modules = {name: self._build_module(ctx, name, body, raw.defaults.timeout) for name, body in raw.modules.items()}
        targets = _build_targets(context, raw, modules)
        decoded: dict[type, Any] = {}
        for section in self.sections:
            keys = decoded[section.keys] = _keys_of(raw, section.keys)
            targets += section.expand(keys, context)
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
            modules=types.MappingProxyType(modules),
            targets=tuple(targets),
            push=raw.push,
            fleet=raw.fleet,
            sections=types.MappingProxyType(decoded),
        )

    def _build_module(self, ctx: ConfigContext, name: str, body: Any, default_timeout: float) -> ModuleConfig[Any]:
        path: Path = ("modules", name)
        if not isinstance(body, dict):
            raise ctx.error(path, "a module must be a mapping with at least 'prober'")
        prober = body.get("prober")
        known = ", ".join(sorted(self.module_types))
        if prober is None:
            raise ctx.error(path, f"missing required key 'prober' (one of: {known})")
        if prober not in self.module_types:
            raise ctx.error(path + ("prober",), f"unknown prober {prober!r}; known probers: {known}")
        decoded = ctx.convert(body, self.module_types[prober], path)
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


def _raw_type(sections: Sequence[SectionSpec[Any]]) -> type:
    """The whole file's struct: the agent's own keys and every section's, decoded in one pass (so the first
    error in the file is the one reported, wherever it is)."""
    taken = set(AgentSections.__struct_fields__)
    fields: list[tuple[str, Any, Any]] = []
    for section in sections:
        for info in msgspec.structs.fields(section.keys):
            if info.encode_name in taken:
                raise TypeError(f"{section.keys.__name__}: top-level key {info.encode_name!r} is already taken")
            taken.add(info.encode_name)
            fields.append((info.name, info.type, _default(info)))
    return msgspec.defstruct("RawAgentConfig", fields, bases=(AgentSections,), module=__name__, namespace={"__doc__": RAW_DOC})


def _default(info: msgspec.structs.FieldInfo) -> Any:
    if info.default_factory is not msgspec.NODEFAULT:
        return msgspec.field(default_factory=info.default_factory)
    return info.default  # NODEFAULT: a required key


def _keys_of(raw: Any, keys: type[msgspec.Struct]) -> Any:
    return keys(**{name: getattr(raw, name) for name in keys.__struct_fields__})


def _build_targets(context: SectionContext, raw: AgentSections, modules: dict[str, ModuleConfig[Any]]) -> list[Target]:
    targets = []
    for index, target in enumerate(raw.targets):
        path: Path = ("targets", index)
        if not target.name.strip():
            raise context.error(path + ("name",), "must not be empty")
        context.claim_name(target.name, path)
        if target.module not in modules:
            known = ", ".join(sorted(modules)) or "none defined"
            raise context.error(path + ("module",), f"unknown module {target.module!r}; modules: {known}")
        context.check_labels(target.labels, path + ("labels",))
        if not target.enabled:
            continue
        module = modules[target.module]
        interval = context.interval(target.interval)
        blame = path + ("interval",) if target.interval is not None else path + ("module",)
        check_interval(context.ctx, interval, module.timeout, f"module {module.name!r}",
                       (path + ("interval",), ("modules", module.name, "timeout"), blame))
        targets.append(context.target(target.name, target.address, module, interval, target.labels, target.all_addresses))
    return targets
