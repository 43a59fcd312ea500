"""The series store: per inventory agent, the latest value of each series, with identity labels and a TTL.

Built for the ingest path: a series seen before costs one dict lookup and two attribute writes per push.
Each entry keeps what every reader needs precomputed once, when the series first arrives:
- `prefix`: the exposition line up to the value (`name{labels} `), so /metrics is string joins;
- `forward_block`: the labels sent on by remote_write out (identity labels and external labels applied), as
  the label block foundation.remote_write.write_blocks takes, so forwarding a series costs no label lookup.

Identity labels (agency, agent, district, level) come from the inventory entry the credential (or the scrape
address) is bound to, and overwrite whatever the agent sent.

Each series keeps the timestamp of its last accepted sample; a sample at or before it is a duplicate (a batch sent
again because its acknowledgement was lost, or a sample out of order): dropped and counted, the push still
succeeds, so neither /metrics nor remote_write out sees a sample twice or out of order. The timestamp outlives the
series' end (a stale marker, or the agent's TTL) for as long as the agent is in the inventory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from collector.config_model import InventoryAgent
from foundation.remote_write import STALE_NAN, BlockSeries, Labels, Sample, Series, is_stale_marker, label_block
from foundation.textformat import format_value, label_pairs

RESERVED_NAMES = frozenset({"netmon_agent_up", "netmon_agent_last_seen_timestamp_seconds", "netmon_agency_info"})
RESERVED_PREFIX = "netmon_collector_"


class Rejected(ValueError):
    """A push the collector refuses as a whole; `reason` is a bounded label value."""

    def __init__(self, reason: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after  # seconds, for a refusal the sender should retry (429)


class Entry:
    """One series of one agent: its latest sample and its precomputed forms."""

    __slots__ = ("name", "prefix", "forward_block", "value", "timestamp_ms")

    def __init__(self, name: str, prefix: str, forward_block: bytes) -> None:
        self.name = name
        self.prefix = prefix
        self.forward_block = forward_block
        self.value = 0.0
        self.timestamp_ms = -1


@dataclass(slots=True)
class AgentState:
    agent: InventoryAgent
    external_labels: Labels
    last_seen: float = 0.0  # unix seconds of the last accepted push or successful scrape; 0: never
    scrape_ok: bool = True  # pull agents: whether the latest scrape succeeded
    series: dict[Labels, Entry] = field(default_factory=dict)  # by the labels the agent sent
    outputs: dict[str, Entry] = field(default_factory=dict)  # by exposition prefix: one entry per output series
    ended: dict[str, int] = field(default_factory=dict)  # last timestamp of series forgotten at the TTL, by prefix
    aliased: bool = False  # two label sets the agent sent became one series (they differed only in identity labels)

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
        shown = label_pairs((name, value) for name, value in merged if name != "__name__")
        prefix = f"{metric_name}{{{shown}}} "
        entry = self.outputs.get(prefix)
        if entry is not None:
            self.aliased = True
            return entry
        entry = self.outputs[prefix] = Entry(metric_name, prefix, label_block(forward))
        entry.timestamp_ms = self.ended.pop(prefix, -1)
        return entry

    def entries(self) -> Iterable[Entry]:
        """Each output series once."""
        return dict.fromkeys(self.series.values()) if self.aliased else self.series.values()

    def forget(self) -> None:
        self.ended.update((prefix, entry.timestamp_ms) for prefix, entry in self.outputs.items())
        self.series.clear()
        self.outputs.clear()
        self.aliased = False


def _check_values(series: list[Series], entries: list[Entry]) -> None:
    for (_, samples), entry in zip(series, entries):
        for _, value in samples:
            if not math.isfinite(value) and not is_stale_marker(value):
                shown = entry.prefix.strip()
                raise Rejected("non_finite_value", f"series {shown} has the value {format_value(value)}; send finite values or a stale marker")


def _after(samples: tuple[Sample, ...], last_ms: int) -> tuple[Sample, ...]:
    """The samples that each come after the one before them, the first after `last_ms`."""
    kept = []
    for sample in samples:
        if sample[0] > last_ms:
            kept.append(sample)
            last_ms = sample[0]
    return tuple(kept)


class SeriesStore:
    """Every inventory agent's state, never-seen agents included (they are down from the start)."""

    def __init__(self, agents: Iterable[InventoryAgent], external_labels: Labels = ()) -> None:
        self.states: dict[str, AgentState] = {agent.id: AgentState(agent, external_labels) for agent in agents}
        self.duplicate_samples = 0  # dropped since start: at or before their series' last accepted timestamp

    def accept(
        self, state: AgentState, series: list[Series], now: float, forwarding: bool = True,
        admit: Callable[[int], None] | None = None,
    ) -> tuple[int, list[BlockSeries]]:
        """Store a push's series as a whole or not at all (Rejected); the count of samples stored (duplicates
        left out) and, when forwarding, the series to send on (with their forwarded labels as label blocks).

        Samples must be finite (stale markers excepted): a series ends with a stale marker, not a NaN.
        `admit(count)` runs once the push is known valid, before anything is stored; it may raise Rejected.
        This is the collector's hot path: one dict lookup per known series, one sum over the values, and for
        the usual series of one new sample one comparison of its timestamp.
        """
        values = [value for _, samples in series for _, value in samples]
        if len(values) != len(series) and not all(samples for _, samples in series):
            series = [one for one in series if one[1]]
        known = state.series
        get = known.get
        entries: list[Entry] = []
        new_series = False
        for labels, _ in series:
            entry = get(labels)
            if entry is None:
                entry = state.entry_for(labels)
                new_series = True
            entries.append(entry)
        total = sum(values)
        if total - total != 0.0:  # a NaN or an infinity somewhere (or an overflowing sum): look closer
            _check_values(series, entries)
        if admit is not None:
            admit(len(values))
        forward: list[BlockSeries] = []
        duplicates = 0
        for (labels, samples), entry in zip(series, entries):
            if len(samples) > 1 or samples[0][0] <= entry.timestamp_ms:
                newer = _after(samples, entry.timestamp_ms)
                duplicates += len(samples) - len(newer)
                if not newer:
                    continue
                samples = newer
            timestamp_ms, value = samples[-1]
            entry.timestamp_ms = timestamp_ms
            if value != value:  # a stale marker (checked above): the series has ended
                known.pop(labels, None)
            else:
                entry.value = value
                if new_series:  # only a series with a sample stored exists (not one whose samples were all duplicates)
                    known[labels] = entry
            if forwarding:
                forward.append((entry.forward_block, samples))
        state.last_seen = now
        self.duplicate_samples += duplicates
        return len(values) - duplicates, forward

    def apply(self, agents: Iterable[InventoryAgent], external_labels: Labels, now: float) -> list[BlockSeries]:
        """Follow a reloaded inventory: new agents start down, removed agents' states go, an agent whose identity
        labels (or the external labels) changed starts its series afresh; stale markers for every series ended."""
        previous, self.states = self.states, {}
        ended: list[BlockSeries] = []
        for agent in agents:
            state = previous.pop(agent.id, None)
            if state is None:
                state = AgentState(agent, external_labels)
            elif state.agent.identity != agent.identity or state.external_labels != external_labels:
                ended += self._end(state, list(state.series), now)
                state = AgentState(agent, external_labels, state.last_seen, state.scrape_ok)
            else:
                state.agent = agent  # a new TTL, interval, address or credential: the series stay
            self.states[agent.id] = state
        for state in previous.values():
            ended += self._end(state, list(state.series), now)
        return ended

    def replace(self, state: AgentState, series: list[Series], now: float, forwarding: bool = True) -> tuple[int, list[BlockSeries]]:
        """A scrape's full set: series missing from it end (stale markers to forward)."""
        count, forward = self.accept(state, series, now, forwarding)
        fresh = {labels for labels, _ in series}
        gone = [labels for labels in state.series if labels not in fresh]
        ended = self._end(state, gone, now)
        return count, forward + ended if forwarding else forward

    def expire(self, now: float) -> list[BlockSeries]:
        """Silent agents past their TTL lose their series; stale markers for each, to forward."""
        forward: list[BlockSeries] = []
        for state in self.states.values():
            if state.series and now - state.last_seen > state.agent.ttl:
                forward += self._end(state, list(state.series), now)
                state.forget()
        return forward

    @staticmethod
    def _end(state: AgentState, labels_list: list[Labels], now: float) -> list[BlockSeries]:
        stamp = ((int(now * 1000), STALE_NAN),)
        ended = {state.series.pop(labels).forward_block: None for labels in labels_list}
        return [(block, stamp) for block in ended]

    def live_states(self, now: float) -> Iterator[AgentState]:
        return (state for state in self.states.values() if state.series and now - state.last_seen <= state.agent.ttl)

    def series_count(self, now: float) -> int:
        return sum(len(dict.fromkeys(state.series.values())) if state.aliased else len(state.series) for state in self.live_states(now))

    def render_groups(self, now: float) -> dict[str, list[str]]:
        """Sample lines of live agents' series (no timestamps), by metric name."""
        groups: dict[str, list[str]] = {}
        for state in self.live_states(now):
            for entry in state.entries():
                lines = groups.get(entry.name)
                if lines is None:
                    lines = groups[entry.name] = []
                lines.append(entry.prefix + format_value(entry.value))
        return groups
