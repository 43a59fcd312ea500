"""The config base: the error type with file:line:key, the context that maps key paths to lines and converts
sections into typed structs, reading a config file, listen addresses, and the one interval/timeout check."""

from __future__ import annotations

import argparse
import re
from contextlib import contextmanager
from pathlib import Path as FsPath
from typing import Any, Callable, Iterator, Sequence

import msgspec
from msgspec import inspect as mi

from foundation.config.types import FilePath, SecretFile, SecretRef, decode_hook
from foundation.config.yamlpos import Path, PositionedData, YamlError, load_yaml

ENV_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_MSGSPEC_PATH = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every config section: unknown keys are errors, values never change after load."""


class ConfigError(Exception):
    """A config problem, pointing at the file, line and key path that caused it."""

    def __init__(self, file: str, line: int, path: Path, message: str) -> None:
        self.file, self.line, self.path, self.message = file, line, path, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{self.file}:{self.line}: {where}: {self.message}" if where else f"{self.file}:{self.line}: {self.message}"

    def each(self) -> tuple[ConfigError, ...]:
        """The single problems this error stands for: itself, or every one a ConfigErrors holds."""
        return (self,)


class ConfigErrors(ConfigError):
    """Every problem one load found, sorted by line; str() is one `file:line: key: message` line each. Its own
    file, line, path and message are the first problem's, so a caller that knows only ConfigError still works."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = tuple(sorted((one for error in errors for one in error.each()), key=lambda e: (e.file, e.line)))
        first = self.errors[0]
        super().__init__(first.file, first.line, first.path, first.message)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(error) for error in self.errors)

    def each(self) -> tuple[ConfigError, ...]:
        return self.errors


class ErrorLog:
    """The problems of one load, gathered unit by unit (a section, a module, a target, an ssh or snmp entry):
    msgspec stops at the first error of one conversion and a check at its first problem, so each unit reports
    its first problem and the load goes on with the next unit; `raise_any` then raises them all at once."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextmanager
    def unit(self) -> Iterator[None]:
        """Run one independent unit: a ConfigError it raises is recorded, not propagated."""
        try:
            yield
        except ConfigError as error:
            self.add(error)

    def add(self, error: ConfigError) -> None:
        self.errors.extend(error.each())

    def failed(self, path: Path) -> bool:
        """Whether a problem was found at, inside or above `path`, so what refers to it is not judged again
        (a target naming a module that failed to load is not also "unknown")."""
        return any(
            error.path[: len(path)] == path or (error.path and path[: len(error.path)] == error.path) for error in self.errors
        )

    def raise_any(self) -> None:
        if self.errors:
            raise self.errors[0] if len(self.errors) == 1 else ConfigErrors(self.errors)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


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
            enum = re.match(r"Invalid enum value (.*)", message)
            values = _literal_values(mi.type_info(type_), sub_path) if enum else None
            if enum and values:
                message = f"invalid value {enum.group(1)}; expected one of: {', '.join(str(value) for value in values)}"
            raise self.error(path + sub_path, message) from None

    def check(self, validate: Callable[[], None], path: Path) -> None:
        """Run a section's `validate()`, whose ValueError reads "key.sub: message", as a ConfigError under `path`."""
        try:
            validate()
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise self.error(path + tuple(key.split(".")), message) from None


def _literal_values(info: mi.Type, path: Path) -> tuple[Any, ...] | None:
    """The values of the Literal at `path` inside a type, to list them when a value is not one of them."""
    if isinstance(info, mi.UnionType):
        found = (_literal_values(member, path) for member in info.types if not isinstance(member, mi.NoneType))
        return next((values for values in found if values), None)
    if not path:
        return info.values if isinstance(info, mi.LiteralType) else None
    key, rest = path[0], path[1:]
    if isinstance(info, mi.StructType):
        field = next((field for field in info.fields if field.encode_name == key), None)
        return _literal_values(field.type, rest) if field is not None else None
    if isinstance(info, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        return _literal_values(info.item_type, rest)
    if isinstance(info, mi.TupleType) and isinstance(key, int) and key < len(info.item_types):
        return _literal_values(info.item_types[key], rest)
    if isinstance(info, mi.DictType):
        return _literal_values(info.value_type, rest)
    return None


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


def unresolved_references_hook(type_: type, value: Any) -> Any:
    """Like decode_hook, but `${ENV}` and `*_file` references are checked by form, not read: their value is a
    placeholder long enough for length checks. For configs that are validated here and run elsewhere."""
    if type_ is SecretRef:
        if not isinstance(value, str) or not ENV_REFERENCE.match(value):
            return SecretRef.parse(value)  # raises the usual "secrets are accepted only by reference" error
        return SecretRef(f"<unresolved {value}>", f"env:{value[2:-1]}")
    if type_ is SecretFile or type_ is FilePath:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path")
        return SecretFile(f"<unresolved file {value}>", f"file:{value}") if type_ is SecretFile else FilePath(value)
    return decode_hook(type_, value)


def parse_listen_address(text: str, default_port: int) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6; an empty host is every address) -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT like '0.0.0.0:{default_port}', got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def listen_argument(default_port: int) -> Callable[[str], tuple[str, int]]:
    """An argparse `type=` for `--listen HOST:PORT`, by the same rules as the config's `listen:`."""

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_listen_address(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def parse_listen(ctx: ConfigContext, listen: str, default_port: int) -> tuple[str, int]:
    try:
        return parse_listen_address(listen, default_port)
    except ValueError as exc:
        raise ctx.error(("listen",), str(exc)) from None


def check_interval(ctx: ConfigContext, interval: float, timeout: float, what: str, paths: tuple[Path, Path, Path]) -> None:
    """The one interval/timeout check: both positive, and a run ends before the next is due. `paths` are the
    interval's, the timeout's, and where a timeout longer than the interval is blamed (the key the entry set)."""
    interval_path, timeout_path, blame = paths
    if interval <= 0:
        raise ctx.error(interval_path, "must be greater than 0")
    if timeout <= 0:
        raise ctx.error(timeout_path, "must be greater than 0")
    if timeout > interval:
        raise ctx.error(blame, f"timeout {timeout:g}s ({what}) is longer than the interval {interval:g}s")
