"""The series store: per inventory agent, the latest value of each series, with identity labels and a TTL.

Built for the ingest path: a series seen before costs one dict lookup and two attribute writes per push, a
series seen for the first time one entry (its metric name and the label set the agent sent, both shared objects).
Each entry keeps what a reader needs, made once, when that reader first asks:
- `prefix`: the exposition line up to the value (`name{labels} `), made at the first /metrics that shows the
  series, so /metrics is string joins and first sight (every series at once after a restart) makes no text;
- `forward_block`: the labels sent on by remote_write out (identity labels and external labels applied), as
  the label block foundation.remote_write.write_blocks takes, so forwarding a series costs no label lookup;
  made with the entry when the collector forwards, else when the series is first forwarded
  (`AgentState.forward_block`, e.g. after a reload adds a remote_write out): a collector without one holds none.
The label sets the agents sent, the keys of `AgentState.series`, are the decoders' (foundation.remote_write):
their (name, value) pairs are shared between the series that repeat them.

Identity labels (agency, agent, district, level) come from the inventory entry the credential (or the scrape
address) is bound to, and overwrite whatever the agent sent.

Each series keeps the timestamp of its last accepted sample; a sample at or before it is a duplicate (a batch sent
again because its acknowledgement was lost, or a sample out of order): dropped and counted, the push still
succeeds, so neither /metrics nor remote_write out sees a sample twice or out of order. The timestamp outlives the
series' end (a stale marker, or the agent's TTL) for as long as the agent is in the inventory.

Samples whose timestamps the TSDB behind would refuse (older than `ingest.max_sample_age`, or further ahead of
the collector's clock than `ingest.max_sample_in_future`) are dropped one by one and counted, the rest of the push
is stored: a TSDB drops them too, silently, after acknowledging them (VictoriaMetrics), and a sample from the far
future would make every later sample of its series look like a duplicate. The agent's state keeps the last
push's drops, for the log and the status page (an agent whose clock is wrong).

Each agent's `probe_path_*` series (the path prober's hops, docs/metrics.md#path) are also indexed by their labels
(`AgentState.path_labels`), kept as the series come and go, so the status page reads an agency's paths without
looking at its other series.

Values are stored as Prometheus stores them: NaN and ±Inf are ordinary values (an exporter's NaN quantile, a +Inf
bucket bound); only the stale marker, the NaN with Prometheus' exact bit pattern, ends a series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter

from collector.config_model import IDENTITY_NAMES, InventoryAgent
from foundation.remote_write import STALE_NAN, BlockSeries, Labels, Sample, Series, is_stale_marker, label_block
from foundation.textformat import format_value, label_pairs

RESERVED_NAMES = frozenset({"netmon_agent_up", "netmon_agent_last_seen_timestamp_seconds", "netmon_agency_info"})
RESERVED_PREFIX = "netmon_collector_"
PATH_PREFIX = "probe_path_"  # the path prober's series, indexed for the status page
NO_WINDOW = (-(1 << 63), (1 << 63) - 1)  # every int64 timestamp: scrapes are stamped by the collector's own clock
_NAME_KEY = ("__name__",)  # sorts just before the pair ("__name__", value)
_label_name = itemgetter(0)


class Rejected(ValueError):
    """A push the collector refuses as a whole; `reason` is a bounded label value."""

    def __init__(self, reason: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after  # seconds, for a refusal the sender should retry (429)


class Entry:
    """One series of one agent: its latest sample and its derived forms, each made when first needed."""

    __slots__ = ("name", "labels", "prefix", "forward_block", "value", "timestamp_ms")

    def __init__(self, name: str, labels: Labels) -> None:
        self.name = name
        self.labels = labels  # the labels the agent sent (the first of several that became this series)
        self.prefix: str | None = None  # made when first rendered (AgentState.prefix)
        self.forward_block: bytes | None = None  # made when first forwarded (AgentState.forward_block)
        self.value = 0.0
        self.timestamp_ms = -1


@dataclass(slots=True)
class OutOfBounds:
    """Samples of one push dropped for timestamps outside the accepted window, and one of them for the log."""

    too_old: int = 0
    too_new: int = 0
    example: str = ""  # `series at time` of one dropped sample
    example_ms: int = 0  # its timestamp

    def note(self, state: AgentState, entry: Entry, timestamp_ms: int, too_old: bool) -> None:
        if too_old:
            self.too_old += 1
        else:
            self.too_new += 1
        if not self.example:
            self.example = f"{state.prefix(entry).strip()} at {format_timestamp(timestamp_ms)}"
            self.example_ms = timestamp_ms


def format_timestamp(timestamp_ms: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return f"{timestamp_ms} ms since 1970"


@dataclass(slots=True)
class AgentState:
    agent: InventoryAgent
    external_labels: Labels
    last_seen: float = 0.0  # unix seconds of the last accepted push or successful scrape; 0: never
    scrape_ok: bool = True  # pull agents: whether the latest scrape succeeded
    series: dict[Labels, Entry] = field(default_factory=dict)  # by the labels the agent sent
    outputs: dict[Labels, Entry] = field(default_factory=dict)  # one entry per output series, by `output_key`
    ended: dict[Labels, int] = field(default_factory=dict)  # last timestamp of series forgotten at the TTL, by key
    aliased: bool = False  # two label sets the agent sent became one series (they differed only in identity labels)
    out_of_bounds: OutOfBounds | None = None  # samples of the last push dropped for their timestamps (None: none)
    path_labels: set[Labels] = field(default_factory=set)  # the keys of `series` whose name starts with PATH_PREFIX

    def is_up(self, now: float) -> bool:
        return self.last_seen > 0 and self.scrape_ok and now - self.last_seen <= self.agent.ttl

    def merged(self, labels: Labels) -> tuple[str, list[tuple[str, str]]]:
        """The metric name and the labels of the series stored for labels the agent sent: identity labels
        overwrite the agent's."""
        identity = self.agent.identity
        identity_names = {name for name, _ in identity}
        kept = [(name, value) for name, value in labels if name not in identity_names]
        metric_name = next((value for name, value in kept if name == "__name__"), "")
        return metric_name, sorted(kept + list(identity))

    @staticmethod
    def output_key(labels: Labels) -> Labels:
        """What identifies the series stored for labels the agent sent: those labels without identity labels,
        which the agent's own replace (label sets that differ only there are one series)."""
        if IDENTITY_NAMES.isdisjoint(map(_label_name, labels)):
            return labels
        return tuple([label for label in labels if label[0] not in IDENTITY_NAMES])

    def entry_for(self, labels: Labels, metric_name: str, forwarding: bool = False) -> Entry:
        """A new entry for labels the agent sent and their metric name (`check_new`), with its forwarded label
        block if `forwarding`. First sight of a series: its exposition text is made when first rendered (`prefix`), its
        label block when forwarded."""
        key = self.output_key(labels)
        entry = self.outputs.get(key)
        if entry is not None:
            self.aliased = True
            return entry
        entry = self.outputs[key] = Entry(metric_name, labels)
        if self.ended:
            entry.timestamp_ms = self.ended.pop(key, -1)
        if forwarding:
            entry.forward_block = self._block_of(self.merged(labels)[1])
        return entry

    @staticmethod
    def check_new(labels: Labels) -> str:
        """The metric name of labels the agent sent; Rejected unless a series of them may be stored (the name is
        not one of the collector's)."""
        metric_name = metric_name_of(labels)
        if metric_name in RESERVED_NAMES or metric_name.startswith(RESERVED_PREFIX):
            raise Rejected("reserved_name", f"metric name {metric_name!r} is reserved for the collector's own series")
        return metric_name

    def prefix(self, entry: Entry) -> str:
        """The entry's exposition line up to the value (`name{labels} `), made once."""
        prefix = entry.prefix
        if prefix is None:
            metric_name, merged = self.merged(entry.labels)
            shown = label_pairs((name, value) for name, value in merged if name != "__name__")
            prefix = entry.prefix = f"{metric_name}{{{shown}}} "
        return prefix

    def forward_block(self, entry: Entry, labels: Labels) -> bytes:
        """The entry's forwarded labels (external labels applied) as a label block, made once; `labels` are
        those the agent sent for it (label sets that became one series give the same block)."""
        block = entry.forward_block
        if block is None:
            block = entry.forward_block = self._block_of(self.merged(labels)[1])
        return block

    def _block_of(self, merged: list[tuple[str, str]]) -> bytes:
        present = {name for name, _ in merged}
        return label_block(tuple(sorted(merged + [label for label in self.external_labels if label[0] not in present])))

    def entries(self) -> Iterable[Entry]:
        """Each output series once."""
        return dict.fromkeys(self.series.values()) if self.aliased else self.series.values()

    def forget(self) -> None:
        self.ended.update((key, entry.timestamp_ms) for key, entry in self.outputs.items())
        self.series.clear()
        self.path_labels.clear()
        self.outputs.clear()
        self.aliased = False


def metric_name_of(labels: Labels) -> str:
    """The value of `__name__` in sorted labels ("" if none)."""
    at = bisect_left(labels, _NAME_KEY)
    return labels[at][1] if at < len(labels) and labels[at][0] == "__name__" else ""


def _sift(
    samples: tuple[Sample, ...], state: AgentState, entry: Entry, window: tuple[int, int], dropped: OutOfBounds,
) -> tuple[Sample, ...]:
    """The samples to store: those within the window that each come after the one before them, the first after
    the entry's last timestamp. Those outside the window are noted in `dropped`; the rest left out are duplicates."""
    oldest, newest = window
    last_ms = entry.timestamp_ms
    kept = []
    for sample in samples:
        stamp = sample[0]
        if not oldest <= stamp <= newest:
            dropped.note(state, entry, stamp, stamp < oldest)
        elif stamp > last_ms:
            kept.append(sample)
            last_ms = stamp
    return tuple(kept)


class SeriesStore:
    """Every inventory agent's state, never-seen agents included (they are down from the start)."""

    def __init__(self, agents: Iterable[InventoryAgent], external_labels: Labels = ()) -> None:
        self.states: dict[str, AgentState] = {agent.id: AgentState(agent, external_labels) for agent in agents}
        self.duplicate_samples = 0  # dropped since start: at or before their series' last accepted timestamp
        self.too_old_samples = 0  # dropped since start: older than the window (e.g. an agent's clock at 1970)
        self.too_new_samples = 0  # dropped since start: ahead of the window (a clock in the future)

    def accept(
        self, state: AgentState, series: list[Series], now: float, forwarding: bool = True,
        admit: Callable[[int, int], None] | None = None, window: tuple[int, int] = NO_WINDOW,
    ) -> tuple[int, list[BlockSeries]]:
        """Store a push's series as a whole or not at all (Rejected); the count of samples stored (duplicates and
        samples outside `window`, (oldest, newest) timestamp in ms, left out) and, when forwarding, the series to
        send on (with their forwarded labels as label blocks).

        A stale marker ends its series; any other value, NaN and ±Inf included, is stored.
        `admit(count, new)` (samples, series not seen before) runs once the push is known valid, before anything
        is stored; it may raise Rejected.
        This is the collector's hot path: one dict lookup per known series and, for the usual series of one new
        sample, three comparisons of its timestamp.
        """
        count = sum([len(samples) for _, samples in series])
        if count != len(series) and not all(samples for _, samples in series):
            series = [one for one in series if one[1]]
        known = state.series
        get = known.get
        entries: list[Entry | None] = [get(labels) for labels, _ in series]
        new_series = entries.count(None)
        if new_series:
            names = [state.check_new(labels) if entry is None else "" for entry, (labels, _) in zip(entries, series)]
        if admit is not None:
            admit(count, new_series)
        if new_series:
            entries = [entry or state.entry_for(labels, name, forwarding) for entry, (labels, _), name in zip(entries, series, names)]
        forward: list[BlockSeries] = []
        oldest, newest = window
        dropped = OutOfBounds()
        left_out = 0
        for (labels, samples), entry in zip(series, entries):
            first = samples[0][0]
            if len(samples) > 1 or first <= entry.timestamp_ms or not oldest <= first <= newest:
                kept = _sift(samples, state, entry, window, dropped)
                left_out += len(samples) - len(kept)
                if not kept:
                    continue
                samples = kept
            timestamp_ms, value = samples[-1]
            entry.timestamp_ms = timestamp_ms
            if value != value and is_stale_marker(value):  # the series has ended
                known.pop(labels, None)
                state.path_labels.discard(labels)
            else:
                entry.value = value
                if new_series:  # only a series with a sample stored exists (not one whose samples were all duplicates)
                    known[labels] = entry
                    if entry.name.startswith(PATH_PREFIX):
                        state.path_labels.add(labels)
            if forwarding:
                forward.append((entry.forward_block or state.forward_block(entry, labels), samples))
        state.last_seen = now
        out_of_bounds = dropped.too_old + dropped.too_new
        state.out_of_bounds = dropped if out_of_bounds else None
        self.duplicate_samples += left_out - out_of_bounds
        self.too_old_samples += dropped.too_old
        self.too_new_samples += dropped.too_new
        return count - left_out, forward

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
        state.path_labels.difference_update(labels_list)
        ended = {state.forward_block(state.series.pop(labels), labels): None for labels in labels_list}
        return [(block, stamp) for block in ended]

    def live_states(self, now: float) -> Iterator[AgentState]:
        return (state for state in self.states.values() if state.series and now - state.last_seen <= state.agent.ttl)

    def series_count(self, now: float) -> int:
        return sum(len(dict.fromkeys(state.series.values())) if state.aliased else len(state.series) for state in self.live_states(now))

    def render_groups(self, now: float) -> dict[str, list[str]]:
        """Sample lines of live agents' series (no timestamps), by metric name."""
        self._make_prefixes(now)
        groups: dict[str, list[str]] = {}
        for state in self.live_states(now):
            for entry in state.entries():
                lines = groups.get(entry.name)
                if lines is None:
                    lines = groups[entry.name] = []
                lines.append(entry.prefix + format_value(entry.value))  # type: ignore[operator]
        return groups

    def _make_prefixes(self, now: float) -> None:
        """The exposition prefixes not made yet, before any line: made among the page's lines, which are garbage
        once it is sent, they would leave the allocator's pools part-used (~25 MiB more RSS at 105 k series)."""
        for state in self.live_states(now):
            for entry in state.entries():
                if entry.prefix is None:
                    state.prefix(entry)
