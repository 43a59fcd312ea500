"""Value types that config fields use, and the one decode hook that builds them.

Durations and secret references are resolved here, once, at load time; the running program
only ever sees floats (seconds) and `Secret` objects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}  # Prometheus's
DURATION_UNITS = tuple(_UNIT_SECONDS)
_DURATION_PART = re.compile(rf"(\d+(?:\.\d+)?)({'|'.join(DURATION_UNITS)})")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class Duration(float):
    """Seconds, written in config the Prometheus way: `500ms`, `15s`, `2m`, `1h30m`."""

    @classmethod
    def parse(cls, text: Any) -> "Duration":
        if isinstance(text, bool) or not isinstance(text, str):
            raise ValueError(f"duration must be a string with a unit like '15s' or '2m', got {text!r}")
        text = text.strip()
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"invalid duration {text!r}: use a number with a unit {', '.join(DURATION_UNITS)}, e.g. '15s' or '1m30s'")
        return cls(total)

    def __str__(self) -> str:
        return f"{float(self):g}s"


class Secret:
    """A credential resolved from an environment variable or a file. Never printed."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # "env:NAME" or "file:/path"; safe to show

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretRef(Secret):
    """Config type for `password: ${ENV_NAME}`: only a reference is accepted, never a literal."""

    @classmethod
    def parse(cls, text: Any) -> "Secret":
        match = _ENV_REF.match(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(
                "secrets are accepted only by reference: write '${ENV_VAR}' here, or use the matching *_file key"
            )
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return cls(os.environ[name], f"env:{name}")


class SecretFile(Secret):
    """Config type for `password_file: /path`: the file's content, without the final newline."""

    @classmethod
    def parse(cls, text: Any) -> "Secret":
        if not isinstance(text, str) or not text:
            raise ValueError("expected a file path")
        try:
            value = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {text}: {exc.strerror}") from None
        return cls(value.rstrip("\r\n"), f"file:{text}")


class FilePath(str):
    """A path that must name a readable file at load time (CA bundles, certificates)."""

    @classmethod
    def parse(cls, text: Any) -> "FilePath":
        if not isinstance(text, str) or not text:
            raise ValueError("expected a file path")
        if not os.access(text, os.R_OK) or not os.path.isfile(text):
            raise ValueError(f"file {text} does not exist or is not readable")
        return cls(text)


class Choice(str):
    """One of a fixed set of words that are case-insensitive by nature (DNS types, classes, rcodes): `mx` is
    accepted as `MX`, and the config holds the canonical spelling. A subclass lists its `values`."""

    values: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, text: Any) -> "Choice":
        if isinstance(text, str):
            for value in cls.values:
                if value.casefold() == text.casefold():
                    return cls(value)
        raise ValueError(f"invalid value {text!r}; expected one of: {', '.join(cls.values)} (in any case)")


_PARSERS = {Duration: Duration.parse, SecretRef: SecretRef.parse, SecretFile: SecretFile.parse, FilePath: FilePath.parse}


def decode_hook(type_: type, value: Any) -> Any:
    """msgspec dec_hook: a ValueError raised here becomes a ValidationError with the key path."""
    parser = _PARSERS.get(type_)
    if parser is None and isinstance(type_, type) and issubclass(type_, Choice):
        parser = type_.parse
    if parser is None:
        raise NotImplementedError(f"no decoder for {type_!r}")
    return parser(value)
