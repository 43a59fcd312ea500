"""The latest result of every target, plus running totals of counters and histograms.

Probers report a counter as this run's increment and a histogram as this run's observations; the
store turns them into the cumulative values Prometheus expects. Exposition, push and the status
page all read from here.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from agents.config.model import Target
from agents.results import Metric, ProbeResult

SeriesKey = tuple[Metric, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket, not cumulative; last is +Inf
    total: float = 0.0
    count: int = 0

    @classmethod
    def for_metric(cls, metric: Metric) -> "Histogram":
        return cls(metric.buckets, [0] * (len(metric.buckets) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


@dataclass(slots=True)
class TargetState:
    target: Target
    latest: ProbeResult | None = None
    counters: dict[SeriesKey, float] = field(default_factory=dict)
    histograms: dict[SeriesKey, Histogram] = field(default_factory=dict)
    runs: int = 0


class ResultStore:
    """Thread-safe: the event loop writes, exposition may read from another thread."""

    def __init__(self) -> None:
        self._states: dict[str, TargetState] = {}
        self._lock = threading.Lock()

    def record(self, target: Target, result: ProbeResult) -> None:
        with self._lock:
            state = self._states.get(target.name)
            if state is None or state.target != target:
                state = self._states[target.name] = TargetState(target)
            for sample in result.samples:
                kind = sample.metric.kind
                if sample.metric.latest_only:
                    continue
                if kind == "counter":
                    key = (sample.metric, sample.labels)
                    state.counters[key] = state.counters.get(key, 0.0) + sample.value
                elif kind == "histogram":
                    key = (sample.metric, sample.labels)
                    histogram = state.histograms.get(key)
                    if histogram is None:
                        histogram = state.histograms[key] = Histogram.for_metric(sample.metric)
                    for value in sample.observations:
                        histogram.observe(value)
            state.latest = result
            state.runs += 1

    def retain(self, names: set[str]) -> None:
        """Forget targets that are no longer configured (after a reload)."""
        with self._lock:
            for name in list(self._states):
                if name not in names:
                    del self._states[name]

    def states(self) -> list[TargetState]:
        with self._lock:
            return list(self._states.values())

    def get(self, name: str) -> TargetState | None:
        with self._lock:
            return self._states.get(name)
