"""Logging set-up: human-readable lines by default, one JSON object per line with --log-format json.

Credentials never reach a log line: config secrets are `Secret` objects that print as their source only, and as
a second line of defence every record passes a `SecretRedactor` that masks Authorization header values,
passwords in URLs and the values of the loaded config's secrets (registered with `protect_secrets`), in the
message and in a traceback alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from typing import Any, Iterable, Iterator

import msgspec

from foundation.config.types import Secret

MASK = "<redacted>"
# shorter values (a community "abc") would mask ordinary words all over the log
MIN_SECRET_CHARS = 4
_CREDENTIAL_PATTERNS = (
    re.compile(r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?(?:\w+\s+)?)[^\s'\",;]+"),  # header lines, dict reprs
    re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}"),  # not "a bearer token" in prose
    re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)"),  # scheme://user:PASSWORD@host
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SecretRedactor(logging.Filter):
    """Masks credentials in a record's message and traceback before any formatter sees them."""

    def __init__(self) -> None:
        super().__init__()
        self._values: frozenset[str] = frozenset()

    def protect(self, values: Iterable[str]) -> None:
        self._values = self._values | {value for value in values if len(value) >= MIN_SECRET_CHARS}

    def redact(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):  # a secret containing another goes first
            text = text.replace(value, MASK)
        for pattern in _CREDENTIAL_PATTERNS:
            text = pattern.sub(rf"\g<1>{MASK}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ms), level, logger, msg, and exc with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(SecretRedactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def protect_secrets(config: Any) -> None:
    """Mask the values of every secret in config (agent or collector) in all log output from now on."""
    values = set(secret_values(config))
    for handler in logging.getLogger().handlers:
        for redactor in handler.filters:
            if isinstance(redactor, SecretRedactor):
                redactor.protect(values)


def secret_values(value: Any, seen: set[int] | None = None) -> Iterator[str]:
    """The revealed values of the Secrets anywhere in a tree of dataclasses, msgspec Structs and containers."""
    seen = set() if seen is None else seen
    if isinstance(value, Secret):
        yield value.reveal()
        return
    if isinstance(value, (str, bytes, int, float)) or value is None or id(value) in seen:
        return
    seen.add(id(value))  # modules are shared by many targets: walk each once
    if isinstance(value, dict):
        children: Iterable[Any] = value.values()
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = value
    elif isinstance(value, msgspec.Struct):
        children = (getattr(value, name) for name in value.__struct_fields__)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = (getattr(value, field.name) for field in dataclasses.fields(value))
    else:
        return
    for child in children:
        yield from secret_values(child, seen)
