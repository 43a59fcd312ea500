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
    targets = [_TargetRows(state) for state in states if state.latest is not None]
    families: dict[str, Metric] = {}
    for target in targets:
        for metric in target.families:
            families.setdefault(metric.name, metric)
    for metric in families.values():
        lines = [_family_header(metric)]
        for target in targets:
            for name, own_labels, value in target.rows.get(metric.name, ()):
                lines.append(f"{name}{{{target.label_text(own_labels)}}} {format_value(value)}\n")
            if len(lines) >= lines_per_chunk:
                yield "".join(lines)
                lines = []
        if lines:
            yield "".join(lines)


OwnRow = tuple[str, tuple[tuple[str, str], ...], float]  # sample name, the sample's own labels, value


class _TargetRows:
    """One target's rows grouped by family in one pass, and its series' label text, each label set escaped once
    (an SNMP device repeats one interface's labels in every column: 201 interfaces x 13 columns)."""

    def __init__(self, state: TargetState) -> None:
        self.base = target_labels(state)
        self._base_text = _label_text(self.base)
        self._texts: dict[tuple[tuple[str, str], ...], str] = {}
        self.families: list[Metric] = []
        self.rows: dict[str, list[OwnRow]] = {}
        for sample in state.latest.samples:  # type: ignore[union-attr]
            if sample.metric.latest_only:
                self._add(sample.metric, (sample.metric.name, sample.labels, sample.value))
        for (metric, labels), value in state.counters.items():
            self._add(metric, (counter_name(metric), labels, value))
        for (metric, labels), histogram in state.histograms.items():
            for _, name, row_labels, value in _histogram_rows(metric, dict(labels), histogram):
                self._add(metric, (name, tuple(row_labels.items()), value))

    def _add(self, metric: Metric, row: OwnRow) -> None:
        rows = self.rows.get(metric.name)
        if rows is None:
            self.families.append(metric)
            rows = self.rows[metric.name] = []
        rows.append(row)

    def label_text(self, own: tuple[tuple[str, str], ...]) -> str:
        text = self._texts.get(own)
        if text is None:
            if not own:
                text = self._base_text
            elif any(name in self.base for name, _ in own):  # a sample label overrides a target label
                text = _label_text({**self.base, **dict(own)})
            else:
                text = f"{self._base_text},{label_pairs(own)}"
            self._texts[own] = text
        return text


def _label_text(labels: Labels) -> str:
    return label_pairs(labels.items())


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
