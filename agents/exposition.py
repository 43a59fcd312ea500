"""Expose results as Prometheus metric families (a prometheus_client custom collector).

Every probe series carries `target`, `module` and the target's configured labels; the sample's own
labels come last and win.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from agents.probes.base import Metric, ProbeResult, Sample
from agents.store import Histogram, ResultStore, TargetState

Labels = dict[str, str]


class _Families:
    """Families by metric name, created on first use, in first-seen order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Family] = {}

    def family(self, metric: Metric) -> Family:
        family = self._by_name.get(metric.name)
        if family is None:
            name = metric.name[: -len("_total")] if metric.kind == "counter" and metric.name.endswith("_total") else metric.name
            family = self._by_name[metric.name] = Family(name, metric.help, metric.kind)
        return family

    def __iter__(self) -> Iterator[Family]:
        return iter(self._by_name.values())


def _add_gauges(families: _Families, samples: Iterable[Sample], base: Labels) -> None:
    for sample in samples:
        if sample.metric.kind == "gauge":
            families.family(sample.metric).add_sample(sample.metric.name, {**base, **dict(sample.labels)}, sample.value)


def _add_histogram(family: Family, name: str, labels: Labels, histogram: Histogram) -> None:
    for bound, count in histogram.cumulative():
        family.add_sample(f"{name}_bucket", {**labels, "le": bound}, count)
    family.add_sample(f"{name}_sum", labels, histogram.total)
    family.add_sample(f"{name}_count", labels, histogram.count)


def _target_labels(state: TargetState) -> Labels:
    target = state.target
    return {"target": target.name, "module": target.module.name, **dict(target.labels)}


class ResultCollector(Collector):
    def __init__(self, store: ResultStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Family]:
        families = _Families()
        for state in self._store.states():
            if state.latest is None:
                continue
            base = _target_labels(state)
            _add_gauges(families, state.latest.samples, base)
            for (metric, labels), value in state.counters.items():
                counter_name = metric.name if metric.name.endswith("_total") else f"{metric.name}_total"
                families.family(metric).add_sample(counter_name, {**base, **dict(labels)}, value)
            for (metric, labels), histogram in state.histograms.items():
                _add_histogram(families.family(metric), metric.name, {**base, **dict(labels)}, histogram)
        yield from families


def result_families(result: ProbeResult) -> list[Family]:
    """One probe result alone, as blackbox's /probe answers it: no target labels, this run's values."""
    families = _Families()
    _add_gauges(families, result.samples, {})
    for sample in result.samples:
        if sample.metric.kind == "counter":
            name = sample.metric.name if sample.metric.name.endswith("_total") else f"{sample.metric.name}_total"
            families.family(sample.metric).add_sample(name, dict(sample.labels), sample.value)
        elif sample.metric.kind == "histogram":
            histogram = Histogram.for_metric(sample.metric)
            for value in sample.observations:
                histogram.observe(value)
            _add_histogram(families.family(sample.metric), sample.metric.name, dict(sample.labels), histogram)
    return list(families)


class FamiliesCollector(Collector):
    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Family]:
        return iter(self._families)
