"""What a domain that owns top-level config keys registers (`SectionSpec`), and what it is handed to check them
and expand them into targets (`SectionContext`).

The loader imports no domain: the prober table (agents/catalog.py) gives it every domain's `SectionSpec`.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

import msgspec

from agents.config.model import Defaults, ModuleConfig, Target
from foundation.config.base import ConfigContext, ConfigError, ErrorLog, format_path
from foundation.config.types import Duration
from foundation.config.yamlpos import Path

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = {"target", "module", "ip", "job", "instance", "le", "quantile", "reason", "phase"}

K = TypeVar("K", bound=msgspec.Struct)
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class SectionSpec(Generic[K]):
    """A domain's top-level keys: the fields of `keys` (a struct), decoded together with the rest of the file so
    errors keep their file:line:key, then checked and turned into targets of the domain's prober by `expand`."""

    keys: type[K]
    expand: Callable[[K, "SectionContext"], list[Target]]


class SectionContext:
    """One load's view for the sections: errors at a key path, the defaults, the agent's labels, and the target
    names taken so far (targets, then each section in table order), so names stay unique across sections; and the
    targets made so far, so a section can refer to them (path_triggers names a path target and its parent).

    Every problem of the file is reported at once: check each independent entry (an ssh host, a check, a
    device) inside `with context.unit():`, iterate list sections with `entries` (an entry that did not decode
    is left out, the others keep their index), and skip what refers to an entry that `failed`."""

    def __init__(self, ctx: ConfigContext, defaults: Defaults, agent_labels: dict[str, str], log: ErrorLog | None = None,
                 kept: dict[str, tuple[int, ...]] | None = None) -> None:
        self.ctx = ctx
        self.defaults = defaults
        self.agent_labels = agent_labels
        self.log = log if log is not None else ErrorLog()
        self._kept = kept or {}  # list section -> the index in the file of each entry that decoded
        self._first_defined: dict[str, str] = {}  # target name -> where, e.g. "ssh_checks[2]"
        self._made: dict[str, Target] = {}  # targets made so far, by name

    def error(self, path: Path, message: str) -> ConfigError:
        return self.ctx.error(path, message)

    def unit(self) -> AbstractContextManager[None]:
        """One independent entry: its first ConfigError is recorded and the load goes on with the next."""
        return self.log.unit()

    def failed(self, path: Path) -> bool:
        """Whether the entry at `path` (e.g. ("ssh_hosts", "mail")) had a problem already reported."""
        return self.log.failed(path)

    def entries(self, section: str, items: Sequence[E]) -> Iterator[tuple[Path, E]]:
        """A list section's decoded entries, each with its key path in the file."""
        indices = self._kept.get(section, range(len(items)))
        return (((section, index), item) for index, item in zip(indices, items))

    def convert(self, data: Any, type_: Any, path: Path) -> Any:
        return self.ctx.convert(data, type_, path)

    def claim_name(self, name: str, entry: Path) -> None:
        """Take a target name for the entry at `entry` (e.g. ("targets", 3)), or fail naming the first one."""
        first = self._first_defined.get(name)
        if first is not None:
            raise self.error(entry + ("name",), f"duplicate target name {name!r} (first defined in {first})")
        self._first_defined[name] = format_path(entry)

    def defined(self, name: str) -> bool:
        """Whether a target of that name is defined so far, enabled or not."""
        return name in self._first_defined

    def made(self, name: str) -> Target | None:
        """The target of that name made so far (targets: only enabled ones are made)."""
        return self._made.get(name)

    def check_labels(self, labels: dict[str, str], path: Path) -> None:
        for name in labels:
            if not LABEL_NAME.match(name) or name.startswith("__"):
                raise self.error(path + (name,), f"invalid label name {name!r}: use letters, digits and '_', not starting with a digit or '__'")
            if name in RESERVED_LABELS:
                raise self.error(path + (name,), f"label name {name!r} is reserved by the agent")

    def interval(self, own: Duration | None) -> float:
        return float(own if own is not None else self.defaults.interval)

    def timeout(self, own: Duration | None) -> float:
        return float(own if own is not None else self.defaults.timeout)

    def target(self, name: str, address: str, module: ModuleConfig[Any], interval: float, labels: dict[str, str],
               all_addresses: bool = False) -> Target:
        """A target whose series carry the agent's labels, overridden by its own."""
        merged = {**self.agent_labels, **labels}
        made = self._made[name] = Target(name, address, module, interval, tuple(sorted(merged.items())), all_addresses)
        return made
