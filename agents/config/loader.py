"""Read an agent config file once into typed, immutable objects, or fail with file:line: key: reason.

The loader knows the agent's own keys only. What probers exist and which top-level keys domains own comes from
the table it is built with (`AgentConfigSchema(probers, sections)`, see agents/catalog.py), so it imports no
prober and no domain.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path as FsPath
from typing import Any, Iterable, Protocol, Sequence, Union

import msgspec

from agents.config.model import AgentConfig, AgentSections, IpProtocol, ModuleConfig, Target, TargetConfig
from agents.config.sections import SectionContext, SectionSpec
from foundation.config.base import (
    ConfigContext,
    ErrorLog,
    check_interval,
    format_path,
    parse_listen,
    read_config_file,
    yaml_sections,
)
from foundation.config.types import Duration
from foundation.config.yamlpos import Path

DEFAULT_PORT = 9855
_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")  # a name, or an [index]
RAW_DOC = (
    "The file's shape: the agent's own keys and those each domain registers. Each section, module and entry is "
    "decoded on its own (see loader), so every error in the file is reported with its key."
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
        """The typed config of already-parsed top-level sections (e.g. a local file merged with a served one).
        Every problem is reported at once (ConfigErrors), each unit's first: see foundation ErrorLog."""
        log = ErrorLog()
        decoded, kept = self._decode(ctx, sections, log)
        required = [info.name for info in msgspec.structs.fields(self.raw_type) if info.required]
        if log.failed(("defaults",)) or any(name not in decoded for name in required):
            log.raise_any()  # the rest is checked against these (agent, defaults): judging it now would mislead
        raw = self.raw_type(**decoded)
        context = SectionContext(ctx, raw.defaults, raw.agent.labels, log, kept)
        host, port = _check_own_keys(context, raw)
        modules: dict[str, ModuleConfig[Any]] = {}
        for name, body in raw.modules.items():
            with log.unit():
                modules[name] = self._build_module(ctx, name, body, raw.defaults.timeout)
        targets = _build_targets(context, raw, modules)
        keys_of: dict[type, Any] = {}
        for section in self.sections:
            keys = keys_of[section.keys] = _keys_of(raw, section.keys)
            with log.unit():
                targets += section.expand(keys, context)
        log.raise_any()
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
            sections=types.MappingProxyType(keys_of),
        )

    def _decode(self, ctx: ConfigContext, sections: dict[str, Any], log: ErrorLog) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
        """Each top-level section on its own, and each entry of a list or mapping of structs (targets, ssh_checks,
        ssh_hosts, snmp_devices) on its own, so one wrong key does not hide the next. Returns the decoded
        fields, and for each list the original index of every entry kept (errors keep pointing at the file)."""
        fields = {info.encode_name: info for info in msgspec.structs.fields(self.raw_type)}
        for key in sections:
            if key not in fields:
                log.add(ctx.error((key,), "unknown key (check spelling and indentation)"))
        decoded: dict[str, Any] = {}
        kept: dict[str, tuple[int, ...]] = {}
        for key, info in fields.items():
            if key not in sections:
                if info.required:
                    log.add(ctx.error((), f"missing required key {key!r}"))
                continue
            value, entry = sections[key], _entry_struct(info.type)
            if entry is not None and isinstance(value, list):
                entries = {index: _decoded(ctx, log, item, entry, (key, index)) for index, item in enumerate(value)}
                kept[key] = tuple(index for index, item in entries.items() if item is not _FAILED)
                decoded[info.name] = [entries[index] for index in kept[key]]
            elif entry is not None and isinstance(value, dict):
                entries = {name: _decoded(ctx, log, item, entry, (key, name)) for name, item in value.items()}
                decoded[info.name] = {name: item for name, item in entries.items() if item is not _FAILED}
            else:
                item = _decoded(ctx, log, value, info.type, (key,))
                if item is not _FAILED:
                    decoded[info.name] = item
        return decoded, kept

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
                raise ctx.error(path + (prober, *_key_path(key)) if message else path + (prober,), message or key) from None
        return ModuleConfig(name, prober, timeout, decoded.preferred_ip_protocol, decoded.ip_protocol_fallback, settings)


def _key_path(key: str) -> Path:
    """`steps[1].url` -> ("steps", 1, "url"), so the error points at that key's own line; a key that does not read
    back the same (a header name with a dot) stays one part."""
    parts: list[str | int] = [int(index) if index else name for name, index in _KEY_PART.findall(key)]
    return tuple(parts) if format_path(tuple(parts)) == key else (key,)


def _check_own_keys(context: SectionContext, raw: AgentSections) -> tuple[str, int]:
    """The agent's own keys beyond their types; the listen address (host, port)."""
    ctx, log = context.ctx, context.log
    with log.unit():
        context.check_labels(raw.agent.labels, ("agent", "labels"))
    if raw.max_concurrent_probes < 1:
        log.add(ctx.error(("max_concurrent_probes",), "must be at least 1"))
    host, port = "", DEFAULT_PORT
    with log.unit():
        host, port = parse_listen(ctx, raw.listen, DEFAULT_PORT)
    for key, section in (("push", raw.push), ("fleet", raw.fleet)):
        if section is not None:
            with log.unit():
                ctx.check(section.validate, (key,))
    return host, port


_FAILED = object()  # an entry that did not decode (its error is logged)


def _decoded(ctx: ConfigContext, log: ErrorLog, data: Any, type_: Any, path: Path) -> Any:
    with log.unit():
        return ctx.convert(data, type_, path)
    return _FAILED


def _entry_struct(type_: Any) -> type | None:
    """The struct of a `list[S]` or `dict[str, S]` field (its entries are decoded one by one), else None."""
    origin, arguments = typing.get_origin(type_), typing.get_args(type_)
    entry = arguments[0] if origin is list and arguments else arguments[1] if origin is dict and len(arguments) == 2 else None
    return entry if isinstance(entry, type) and issubclass(entry, msgspec.Struct) else None


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
    """The whole file's struct: the agent's own keys and every section's (the loader decodes it section by
    section, see `_decode`)."""
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
    for path, target in context.entries("targets", raw.targets):
        with context.unit():
            built = _build_target(context, path, target, modules, raw.modules)
            if built is not None:
                targets.append(built)
    return targets


def _build_target(context: SectionContext, path: Path, target: TargetConfig, modules: dict[str, ModuleConfig[Any]],
                  defined: dict[str, Any]) -> Target | None:
    """The target to schedule, or None when disabled or when its module failed to load (reported there)."""
    if not target.name.strip():
        raise context.error(path + ("name",), "must not be empty")
    context.claim_name(target.name, path)
    if target.module not in modules:
        if context.failed(("modules", target.module)):
            return None
        known = ", ".join(sorted(defined)) or "none defined"  # those that failed to load too: a typo is a typo
        raise context.error(path + ("module",), f"unknown module {target.module!r}; modules: {known}")
    context.check_labels(target.labels, path + ("labels",))
    module = modules[target.module]
    check_address = getattr(module.settings, "check_address", None)
    if check_address is not None:
        try:
            check_address(target.address)
        except ValueError as exc:
            raise context.error(path + ("address",), str(exc)) from None
    if not target.enabled:
        return None
    interval = context.interval(target.interval)
    blame = path + ("interval",) if target.interval is not None else path + ("module",)
    check_interval(context.ctx, interval, module.timeout, f"module {module.name!r}",
                   (path + ("interval",), ("modules", module.name, "timeout"), blame))
    return context.target(target.name, target.address, module, interval, target.labels, target.all_addresses)
