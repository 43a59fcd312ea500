"""The one interface every prober implements: ``probe(target, module, resources) -> ProbeResult``.

A prober is one async function of that shape plus the settings struct its module decodes into; its row of the
prober table (agents/catalog.py) is a `ProberSpec`. What it returns is in agents/results.py, the state it keeps
across runs in agents/resources.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, TypeVar

from agents.config.model import ModuleConfig
from agents.config.sections import SectionSpec
from agents.resources import ProbeResources
from agents.results import Failure, ProbeResult, ProbeTarget, Reasons

S = TypeVar("S")

Prober = Callable[[ProbeTarget, ModuleConfig[S], ProbeResources], Awaitable[ProbeResult]]


def _whole_address(address: str) -> str:
    return address


def _nothing_to_prepare(module: ModuleConfig[Any], resources: ProbeResources) -> None:
    pass


@dataclass(frozen=True, slots=True)
class ProberSpec(Generic[S]):
    """One row of the prober table: the struct `modules.<name>.<prober>` decodes into, its probe function, the
    failure reasons it raises, and the top-level config keys it owns if its targets come from a section of their
    own (ssh_checks); such a prober's settings struct refuses to be a module (its `validate` raises)."""

    name: str
    settings: type
    probe: Prober[S]
    host_of: Callable[[str], str] = _whole_address  # host part of a target address
    failures: type[Reasons] = Failure
    section: SectionSpec[Any] | None = None
    # more lines under a result in `netmon-agent probe --once` (the transaction prober: a table of its steps)
    result_lines: Callable[[ModuleConfig[Any], ProbeResult], list[str]] | None = None
    # one-time work a module's first probe would otherwise do inside its timed phases, stalling every probe
    # running beside it (imports, TLS contexts, engines); `run` (at start and reload) and `probe --once` run it first
    prepare: Callable[[ModuleConfig[Any], ProbeResources], None] = _nothing_to_prepare
