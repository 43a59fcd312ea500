"""`path_triggers`: trace a path at once when its parent target degrades, besides its own (slow) interval.

```yaml
targets:
  - {name: dc-ping, address: 10.0.0.1, module: icmp, interval: 30s}
  - {name: dc-path, address: 10.0.0.1, module: path, interval: 15m}
path_triggers:
  - {path: dc-path, parent: dc-ping, loss_ratio: 0.05, rtt: 150ms, cooldown: 5m}
```

After every result of the parent (an icmp or tcp target), the path target runs at once if the parent's
loss is above `loss_ratio`, its RTT (icmp: average; tcp: connect time) above `rtt`, or it failed on the
network (timeout, unreachable, connect failed) — and if no trigger ran it within `cooldown`. The check
is on the level, not the edge: while the parent stays degraded, the path is traced every cooldown.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.config.model import AgentConfig, Target
from agents.config.sections import SectionContext, SectionSpec
from agents.probes.icmp import LOSS_RATIO, RTT_AVG
from agents.probes.tcp import CONNECT_TIME
from agents.results import Failure, Metric, ProbeResult
from foundation.config.base import Strict
from foundation.config.types import Duration
from foundation.config.yamlpos import Path

PARENT_PROBERS = ("icmp", "tcp")
NETWORK_FAILURES = frozenset(
    {Failure.TIMEOUT, Failure.NETWORK_UNREACHABLE, Failure.HOST_UNREACHABLE, Failure.CONNECT_FAILED}
)


class PathTriggerConfig(Strict):
    path: str  # a target of the path prober
    parent: str  # an icmp or tcp target whose degradation runs the path target at once
    loss_ratio: float = 0.05  # the parent's loss (icmp) above this share triggers
    rtt: Duration | None = None  # the parent's average RTT (icmp) or connect time (tcp) above this triggers
    cooldown: Duration = Duration(300)  # at most one triggered trace of the path target per this long


class PathTriggerKeys(Strict):
    """The top-level keys the path domain owns (registered by agents/path/probe.py's SPEC)."""

    path_triggers: list[PathTriggerConfig] = []  # trace a path when its parent target degrades (docs/configuration.md)


def check_triggers(keys: PathTriggerKeys, context: SectionContext) -> list[Target]:
    """Check that each trigger names a path target and an icmp or tcp parent; triggers make no targets."""
    for path, trigger in context.entries("path_triggers", keys.path_triggers):
        with context.unit():
            _check_target(context, path + ("path",), trigger.path, ("path",))
            _check_target(context, path + ("parent",), trigger.parent, PARENT_PROBERS)
            if not 0 <= trigger.loss_ratio < 1:
                raise context.error(path + ("loss_ratio",), "must be at least 0 and below 1")
            if trigger.rtt is not None and trigger.rtt <= 0:
                raise context.error(path + ("rtt",), "must be greater than 0")
            if trigger.cooldown <= 0:
                raise context.error(path + ("cooldown",), "must be greater than 0")
    return []


def _check_target(context: SectionContext, path: Path, name: str, probers: tuple[str, ...]) -> None:
    target = context.made(name)
    if target is None:
        # defined but not made: disabled (its trigger waits until it is enabled), or failed (reported there)
        if not context.defined(name):
            raise context.error(path, f"unknown target {name!r}")
        return
    if target.module.prober not in probers:
        wanted = " or ".join(probers)
        raise context.error(path, f"target {name!r} uses the {target.module.prober} prober; expected a {wanted} target")


SECTION = SectionSpec(PathTriggerKeys, check_triggers)


@dataclass(frozen=True, slots=True)
class Trigger:
    path: str
    reason: str  # e.g. "loss 20% above 5%", for the log


def degradation(result: ProbeResult, trigger: PathTriggerConfig) -> str | None:
    """Why the parent's result triggers the path (loss, RTT, a network failure), or None."""
    loss = _value(result, LOSS_RATIO)
    if loss is not None and loss > trigger.loss_ratio:
        return f"loss {loss:.0%} above {trigger.loss_ratio:.0%}"
    rtt = _value(result, RTT_AVG)
    rtt = _value(result, CONNECT_TIME) if rtt is None else rtt
    if trigger.rtt is not None and rtt is not None and rtt > trigger.rtt:
        return f"RTT {rtt * 1000:.1f} ms above {trigger.rtt * 1000:g} ms"
    if not result.success and result.failure in NETWORK_FAILURES:
        return f"failed with {result.failure}"
    return None


def _value(result: ProbeResult, metric: Metric) -> float | None:
    return next((sample.value for sample in result.samples if sample.metric is metric), None)


class PathTriggers:
    """Which path targets a result of their parent should run at once; remembers each path's last trigger."""

    def __init__(self) -> None:
        self._by_parent: dict[str, list[PathTriggerConfig]] = {}
        self._last_fired: dict[str, float] = {}  # path target -> monotonic time of its last trigger

    def apply(self, config: AgentConfig) -> None:
        """Follow a (re)loaded config; triggers whose path or parent is disabled wait."""
        enabled = {target.name for target in config.targets}
        by_parent: dict[str, list[PathTriggerConfig]] = {}
        for trigger in config.section(PathTriggerKeys).path_triggers:
            if trigger.path in enabled and trigger.parent in enabled:
                by_parent.setdefault(trigger.parent, []).append(trigger)
        self._by_parent = by_parent

    def due(self, parent: str, result: ProbeResult, now: float) -> list[Trigger]:
        """The path targets to run now after this result of `parent` (each at most once per its cooldown)."""
        fired = []
        for trigger in self._by_parent.get(parent, ()):
            last = self._last_fired.get(trigger.path)
            if last is not None and now - last < trigger.cooldown:
                continue
            reason = degradation(result, trigger)
            if reason is not None:
                self._last_fired[trigger.path] = now
                fired.append(Trigger(trigger.path, f"{parent}: {reason}"))
        return fired
