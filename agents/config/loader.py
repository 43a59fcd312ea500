"""Read an agent config file once into typed, immutable objects, or fail with file:line: key: reason."""

from __future__ import annotations

import functools
import re
import types
from pathlib import Path as FsPath
from typing import Any, Callable, Union

import msgspec

from agents.config.model import (
    AgentConfig,
    IpProtocol,
    ModuleConfig,
    RawAgentConfig,
    Target,
    TargetConfig,
)
from agents.config.types import Duration, FilePath, SecretFile, SecretRef, decode_hook
from agents.config.yamlpos import Path, PositionedData, YamlError, load_yaml
from agents.host import validate_host
from agents.ssh.targets import build_ssh_targets
from agents.snmp.targets import build_snmp_targets

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = {"target", "module", "ip", "job", "instance", "le", "quantile", "reason", "phase"}
ENV_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_MSGSPEC_PATH = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class ConfigError(Exception):
    """A config problem, pointing at the file, line and key path that caused it."""

    def __init__(self, file: str, line: int, path: Path, message: str) -> None:
        self.file, self.line, self.path, self.message = file, line, path, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{self.file}:{self.line}: {where}: {self.message}" if where else f"{self.file}:{self.line}: {self.message}"


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


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


class ConfigContext:
    def __init__(self, file: str, positioned: PositionedData, dec_hook: Callable[[type, Any], Any] = decode_hook) -> None:
        self.file = file
        self.positioned = positioned
        self.dec_hook = dec_hook

    def error(self, path: Path, message: str) -> ConfigError:
        return ConfigError(self.file, self.positioned.line_of(path), path, message)

    def convert(self, data: Any, type_: Any, path: Path) -> Any:
        try:
            return msgspec.convert(data, type_, dec_hook=self.dec_hook)
        except msgspec.ValidationError as exc:
            message, separator, where = str(exc).rpartition(" - at `")
            if not separator:
                message, where = str(exc), ""
            sub_path = _parse_msgspec_path(where.rstrip("`"))
            missing = re.match(r"Object missing required field `(\w+)`", message)
            if missing:
                message = f"missing required key '{missing.group(1)}'"
            unknown = re.match(r"Object contains unknown field `(\w+)`", message)
            if unknown:
                sub_path += (unknown.group(1),)
                message = "unknown key (check spelling and indentation)"
            raise self.error(path + sub_path, message) from None


def _parse_msgspec_path(text: str) -> Path:
    parts: list[str | int] = []
    for match in _MSGSPEC_PATH.finditer(text):
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
    return tuple(parts)


def read_config_file(path: str | FsPath) -> str:
    """A config file's text; ConfigError when it cannot be read or is not UTF-8."""
    try:
        return FsPath(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), 0, (), f"cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), 0, (), f"config file is not UTF-8: {exc.reason}") from None


def yaml_sections(text: str, file: str, expected: str) -> tuple[ConfigContext, dict[str, Any]]:
    """The top-level mapping of a config text and the context that maps key paths to lines."""
    try:
        positioned = load_yaml(text)
    except YamlError as exc:
        raise ConfigError(file, exc.line, exc.path, exc.message) from None
    ctx = ConfigContext(file, positioned)
    if not isinstance(positioned.data, dict):
        raise ctx.error((), f"the config must be a mapping with {expected}")
    # a section with every entry commented out is null in YAML; it means "none", not an error
    return ctx, {key: value for key, value in positioned.data.items() if value is not None}


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
    host, port = parse_listen(ctx, raw.listen)
    modules = {name: _build_module(ctx, name, body, raw.defaults.timeout) for name, body in raw.modules.items()}
    targets = _build_targets(ctx, raw, modules)
    targets += build_ssh_targets(ctx, raw, _check_labels)
    targets += build_snmp_targets(ctx, raw, _check_labels)
    _check_host(ctx, raw)
    _check_push(ctx, raw)
    _check_fleet(ctx, raw)
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


def unresolved_references_hook(type_: type, value: Any) -> Any:
    """Like decode_hook, but `${ENV}` and `*_file` references are checked by form, not read: their value is a
    placeholder long enough for length checks. The collector validates configs it will not run this way."""
    if type_ is SecretRef:
        if not isinstance(value, str) or not ENV_REFERENCE.match(value):
            return SecretRef.parse(value)  # raises the usual "secrets are accepted only by reference" error
        return SecretRef(f"<unresolved {value}>", f"env:{value[2:-1]}")
    if type_ is SecretFile or type_ is FilePath:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path")
        return SecretFile(f"<unresolved file {value}>", f"file:{value}") if type_ is SecretFile else FilePath(value)
    return decode_hook(type_, value)


def _check_host(ctx: ConfigContext, raw: RawAgentConfig) -> None:
    try:
        validate_host(raw.host)
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise ctx.error(("host", *key.split(".")), message) from None


def _check_push(ctx: ConfigContext, raw: RawAgentConfig) -> None:
    if raw.push is None:
        return
    try:
        raw.push.validate()
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise ctx.error(("push", *key.split(".")), message) from None


def _check_fleet(ctx: ConfigContext, raw: RawAgentConfig) -> None:
    if raw.fleet is None:
        return
    try:
        raw.fleet.validate()
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise ctx.error(("fleet", *key.split(".")), message) from None


def parse_listen(ctx: ConfigContext, listen: str, default_port: int = 9855) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ctx.error(("listen",), f"expected HOST:PORT like '0.0.0.0:{default_port}', got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        if interval <= 0:
            raise ctx.error(path + ("interval",), "must be greater than 0")
        if module.timeout > interval:
            raise ctx.error(
                path + ("interval",) if target.interval is not None else path + ("module",),
                f"interval {interval:g}s is shorter than module {module.name!r}'s timeout {module.timeout:g}s",
            )
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
