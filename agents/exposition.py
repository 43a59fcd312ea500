"""Expose results in the Prometheus text format, and as prometheus_client families for push and /probe.

Every probe series carries `target`, `module` and the target's configured labels; the sample's own
labels come last and win. /metrics renders text directly from the store (`render_text`): at 1,000
ICMP targets prometheus_client's object-per-sample path cost 0.3 s and ~20 MB per scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from agents.results import Metric, ProbeResult, Sample
from agents.store import Histogram, ResultStore, TargetState
from foundation.textformat import family_header, format_value, label_pairs

Labels = dict[str, str]
SeriesRow = tuple[Metric, str, Labels, float]  # family, sample name, labels, value


def counter_name(metric: Metric) -> str:
    return metric.name if metric.name.endswith("_total") else f"{metric.name}_total"


def target_labels(state: TargetState) -> Labels:
    target = state.target
    return {"target": target.name, "module": target.module.name, **dict(target.labels)}


def target_rows(state: TargetState) -> Iterator[SeriesRow]:
    """Every series of one target now: the latest gauges, counter totals, histogram buckets."""
    if state.latest is None:
        return
    base = target_labels(state)
    for sample in state.latest.samples:
        if sample.metric.latest_only:
            yield sample.metric, sample.metric.name, {**base, **dict(sample.labels)}, sample.value
    for (metric, labels), value in state.counters.items():
        yield metric, counter_name(metric), {**base, **dict(labels)}, value
    for (metric, labels), histogram in state.histograms.items():
        yield from _histogram_rows(metric, {**base, **dict(labels)}, histogram)


def _histogram_rows(metric: Metric, labels: Labels, histogram: Histogram) -> Iterator[SeriesRow]:
    for bound, count in histogram.cumulative():
        yield metric, f"{metric.name}_bucket", {**labels, "le": bound}, count
    yield metric, f"{metric.name}_sum", labels, histogram.total
    yield metric, f"{metric.name}_count", labels, histogram.count


# --- text exposition (format 0.0.4) ---------------------------------------------------------------


def _family_header(metric: Metric) -> str:
    name = counter_name(metric) if metric.kind == "counter" and not metric.cumulative else metric.name
    # A counter whose name lacks _total (SNMP's ifHCInOctets) is typed gauge: prometheus_client's parser, which
    # the collector uses, renames such counters to *_total, and dashboards expect snmp_exporter's names.
    kind = "gauge" if metric.cumulative else metric.kind
    return family_header(name, metric.help, kind)


def render_text(states: Iterable[TargetState]) -> str:
    """All targets' series, grouped by family as the text format requires."""
    return "".join(render_chunks(states))


def render_chunks(states: Iterable[TargetState], lines_per_chunk: int = 2000) -> Iterator[str]:
    """The same text in pieces, one family at a time, so a scrape never holds every line at once
    (at 1,000 ICMP targets that is ~34,000 lines, half of them histogram buckets)."""
    states = [state for state in states if state.latest is not None]
    bases = [(state, labels, _label_text(labels)) for state in states for labels in (target_labels(state),)]
    for metric in _families_in_order(states):
        lines = [_family_header(metric)]
        for state, base, base_text in bases:
            for name, own_labels, value in _own_rows(state, metric):
                if not own_labels:
                    label_text = base_text
                elif own_labels.keys() & base.keys():  # a sample label overrides a target label
                    label_text = _label_text({**base, **own_labels})
                else:
                    label_text = f"{base_text},{_label_text(own_labels)}"
                lines.append(f"{name}{{{label_text}}} {format_value(value)}\n")
            if len(lines) >= lines_per_chunk:
                yield "".join(lines)
                lines = []
        if lines:
            yield "".join(lines)


def _label_text(labels: Labels) -> str:
    return label_pairs(labels.items())


def _families_in_order(states: list[TargetState]) -> list[Metric]:
    seen: dict[str, Metric] = {}
    for state in states:
        for sample in state.latest.samples:  # type: ignore[union-attr]
            if sample.metric.latest_only:
                seen.setdefault(sample.metric.name, sample.metric)
        for metric, _ in state.counters:
            seen.setdefault(metric.name, metric)
        for metric, _ in state.histograms:
            seen.setdefault(metric.name, metric)
    return list(seen.values())


def _own_rows(state: TargetState, family: Metric) -> Iterator[tuple[str, Labels, float]]:
    """One family's rows of one target, with only the sample's own labels (the target's are shared)."""
    if family.latest_only:
        for sample in state.latest.samples:  # type: ignore[union-attr]
            if sample.metric.name == family.name:
                yield family.name, dict(sample.labels), sample.value
    elif family.kind == "counter":
        for (metric, labels), value in state.counters.items():
            if metric.name == family.name:
                yield counter_name(metric), dict(labels), value
    else:
        for (metric, labels), histogram in state.histograms.items():
            if metric.name == family.name:
                for _, name, row_labels, value in _histogram_rows(metric, dict(labels), histogram):
                    yield name, row_labels, value


# --- prometheus_client families (push, /probe, tests) -----------------------------------------------


class _Families:
    """Families by metric name, created on first use, in first-seen order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Family] = {}

    def family(self, metric: Metric) -> Family:
        family = self._by_name.get(metric.name)
        if family is None:
            name = metric.name[: -len("_total")] if metric.kind == "counter" and not metric.cumulative and metric.name.endswith("_total") else metric.name
            # cumulative counters keep names without _total, which prometheus_client's counter type would add
            kind = "gauge" if metric.cumulative else metric.kind
            family = self._by_name[metric.name] = Family(name, metric.help, kind)
        return family

    def __iter__(self) -> Iterator[Family]:
        return iter(self._by_name.values())


class ResultCollector(Collector):
    """The same rows as render_text, as prometheus_client families."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Family]:
        families = _Families()
        for state in self._store.states():
            for metric, name, labels, value in target_rows(state):
                families.family(metric).add_sample(name, labels, value)
        yield from families


def result_families(result: ProbeResult) -> list[Family]:
    """One probe result alone, as blackbox's /probe answers it: no target labels, this run's values."""
    families = _Families()
    for sample in result.samples:
        _add_single(families, sample)
    return list(families)


def _add_single(families: _Families, sample: Sample) -> None:
    metric, labels = sample.metric, dict(sample.labels)
    if metric.latest_only:
        families.family(metric).add_sample(metric.name, labels, sample.value)
    elif metric.kind == "counter":
        families.family(metric).add_sample(counter_name(metric), labels, sample.value)
    else:
        histogram = Histogram.for_metric(metric)
        for value in sample.observations:
            histogram.observe(value)
        for _, name, row_labels, value in _histogram_rows(metric, labels, histogram):
            families.family(metric).add_sample(name, row_labels, value)


class FamiliesCollector(Collector):
    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Family]:
        return iter(self._families)
