"""The series store: per inventory agent, the latest value of each series, with identity labels and a TTL.

Built for the ingest path: a series seen before costs one dict lookup and two attribute writes per push.
Each entry keeps what every reader needs precomputed once, when the series first arrives:
- `prefix`: the exposition line up to the value (`name{labels} `), so /metrics is string joins;
- `forward_labels`: the labels sent on by remote_write out (identity labels and external labels applied).

Identity labels (agency, agent, district, level) come from the inventory entry the credential (or the scrape
address) is bound to, and overwrite whatever the agent sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from agents.remote_write import STALE_NAN, Labels, Series, is_stale_marker
from collector.config import InventoryAgent

RESERVED_NAMES = frozenset({"netmon_agent_up", "netmon_agent_last_seen_timestamp_seconds", "netmon_agency_info"})
RESERVED_PREFIX = "netmon_collector_"


class Rejected(ValueError):
    """A push the collector refuses as a whole; `reason` is a bounded label value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Entry:
    """One series of one agent: its latest sample and its precomputed forms."""

    __slots__ = ("name", "prefix", "forward_labels", "value", "timestamp_ms")

    def __init__(self, name: str, prefix: str, forward_labels: Labels) -> None:
        self.name = name
        self.prefix = prefix
        self.forward_labels = forward_labels
        self.value = 0.0
        self.timestamp_ms = -1


@dataclass(slots=True)
class AgentState:
    agent: InventoryAgent
    external_labels: Labels
    last_seen: float = 0.0  # unix seconds of the last accepted push or successful scrape; 0: never
    scrape_ok: bool = True  # pull agents: whether the latest scrape succeeded
    series: dict[Labels, Entry] = field(default_factory=dict)  # by the labels the agent sent

    def is_up(self, now: float) -> bool:
        return self.last_seen > 0 and self.scrape_ok and now - self.last_seen <= self.agent.ttl

    def entry_for(self, labels: Labels) -> Entry:
        """A new entry for labels the agent sent: identity labels overwrite the agent's."""
        identity = self.agent.identity
        identity_names = {name for name, _ in identity}
        kept = [(name, value) for name, value in labels if name not in identity_names]
        metric_name = next((value for name, value in kept if name == "__name__"), "")
        if metric_name in RESERVED_NAMES or metric_name.startswith(RESERVED_PREFIX):
            raise Rejected("reserved_name", f"metric name {metric_name!r} is reserved for the collector's own series")
        merged = sorted(kept + list(identity))
        present = {name for name, _ in merged}
        forward = tuple(sorted(merged + [label for label in self.external_labels if label[0] not in present]))
        shown = ",".join(f'{name}="{escape(value)}"' for name, value in merged if name != "__name__")
        return Entry(metric_name, f"{metric_name}{{{shown}}} ", forward)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    return "NaN" if value != value else ("+Inf" if value > 0 else "-Inf")


class SeriesStore:
    """Every inventory agent's state, never-seen agents included (they are down from the start)."""

    def __init__(self, agents: Iterable[InventoryAgent], external_labels: Labels = ()) -> None:
        self.states: dict[str, AgentState] = {agent.id: AgentState(agent, external_labels) for agent in agents}

    def accept(self, state: AgentState, series: list[Series], now: float) -> tuple[int, list[Series]]:
        """Store a push's series as a whole or not at all (Rejected); the sample count and the series to forward.

        Samples must be finite (stale markers excepted): a series ends with a stale marker, not a NaN.
        """
        known = state.series
        resolved: list[tuple[Labels, Entry, tuple]] = []
        samples_total = 0
        isfinite = math.isfinite
        for labels, samples in series:
            if not samples:
                continue
            entry = known.get(labels)
            if entry is None:
                entry = state.entry_for(labels)
            for _, value in samples:
                if not isfinite(value) and not is_stale_marker(value):
                    raise Rejected("non_finite_value", f"series {entry.prefix.strip()} has the value {format_value(value)}; send finite values (or a stale marker)")
            samples_total += len(samples)
            resolved.append((labels, entry, samples))
        forward = []
        for labels, entry, samples in resolved:
            timestamp_ms, value = samples[-1]
            if value != value:  # a stale marker (checked above): the series has ended
                known.pop(labels, None)
            elif timestamp_ms >= entry.timestamp_ms:
                entry.value = value
                entry.timestamp_ms = timestamp_ms
                known[labels] = entry
            forward.append(Series(entry.forward_labels, samples))
        state.last_seen = now
        return samples_total, forward

    def replace(self, state: AgentState, series: list[Series], now: float) -> tuple[int, list[Series]]:
        """A scrape's full set: series missing from it end (stale markers to forward)."""
        count, forward = self.accept(state, series, now)
        fresh = {labels for labels, _ in series}
        gone = [labels for labels in state.series if labels not in fresh]
        forward += self._end(state, gone, now)
        return count, forward

    def expire(self, now: float) -> list[Series]:
        """Silent agents past their TTL lose their series; stale markers for each, to forward."""
        forward: list[Series] = []
        for state in self.states.values():
            if state.series and now - state.last_seen > state.agent.ttl:
                forward += self._end(state, list(state.series), now)
        return forward

    @staticmethod
    def _end(state: AgentState, labels_list: list[Labels], now: float) -> list[Series]:
        stamp = ((int(now * 1000), STALE_NAN),)
        return [Series(state.series.pop(labels).forward_labels, stamp) for labels in labels_list]

    def live_states(self, now: float) -> Iterator[AgentState]:
        return (state for state in self.states.values() if state.series and now - state.last_seen <= state.agent.ttl)

    def series_count(self, now: float) -> int:
        return sum(len(state.series) for state in self.live_states(now))

    def render(self, now: float) -> str:
        """Exposition text of live agents' series, grouped by metric name, without timestamps."""
        groups: dict[str, list[str]] = {}
        for state in self.live_states(now):
            for entry in state.series.values():
                lines = groups.get(entry.name)
                if lines is None:
                    lines = groups[entry.name] = []
                lines.append(entry.prefix + format_value(entry.value))
        if not groups:
            return ""
        return "\n".join("\n".join(lines) for lines in groups.values()) + "\n"
