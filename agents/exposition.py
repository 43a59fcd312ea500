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
from agents.store import Histogram, ResultStore, SeriesKey, TargetState
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
    """The same text in pieces, one family at a time, written while streaming: a scrape holds each target's
    series references in family order, never their lines or label sets (at 1,000 ICMP targets the whole
    scrape's rows, ~34,000 of them, half histogram buckets, had raised peak RSS by 10 MB)."""
    ranks: dict[str, int] = {}
    metrics: list[Metric] = []
    views = [_TargetView(state, ranks, metrics) for state in states if state.latest is not None]
    for rank, metric in enumerate(metrics):
        lines = [_family_header(metric)]
        for view in views:
            view.write(rank, lines)
            if len(lines) >= lines_per_chunk:
                yield "".join(lines)
                lines = []
        if lines:
            yield "".join(lines)


SeriesSource = Sample | SeriesKey  # a latest-only sample, or the key of a counter or histogram in the store


class _TargetView:
    """One target's series in the scrape's family order: references to its latest samples and to its counter and
    histogram keys (values are read as each family is written, a histogram's rows at once). Each label set is
    escaped once (an SNMP device repeats one interface's labels in every column: 201 interfaces x 13 columns);
    histogram buckets add `le` to their series' text instead of a label set each."""

    __slots__ = ("_state", "_ranks", "_sources", "_next", "base", "_base_text", "_texts")

    def __init__(self, state: TargetState, ranks: dict[str, int], metrics: list[Metric]) -> None:
        def rank(source: SeriesSource) -> int:
            metric = _metric_of(source)
            found = ranks.get(metric.name)
            if found is None:  # first seen: the family is written after those seen before it
                found = ranks[metric.name] = len(metrics)
                metrics.append(metric)
            return found

        self._state = state
        self._ranks = ranks
        sources: list[SeriesSource] = [sample for sample in state.latest.samples if sample.metric.latest_only]  # type: ignore[union-attr]
        sources += state.counters
        sources += state.histograms
        self._sources = sorted(sources, key=rank)  # stable: a family's series keep the target's own order
        self._next = 0
        self.base = target_labels(state)
        self._base_text = _label_text(self.base)
        self._texts: dict[tuple[tuple[str, str], ...], str] = {}

    def write(self, rank: int, lines: list[str]) -> None:
        """Append this target's lines of the family at `rank` (the families are written in rank order)."""
        sources, index = self._sources, self._next
        while index < len(sources) and self._ranks[_metric_of(sources[index]).name] == rank:
            self._write_one(sources[index], lines)
            index += 1
        self._next = index

    def _write_one(self, source: SeriesSource, lines: list[str]) -> None:
        if isinstance(source, Sample):
            lines.append(f"{source.metric.name}{{{self.label_text(source.labels)}}} {format_value(source.value)}\n")
            return
        metric, labels = source
        if metric.kind == "counter":
            value = self._state.counters[source]
            lines.append(f"{counter_name(metric)}{{{self.label_text(labels)}}} {format_value(value)}\n")
            return
        histogram = self._state.histograms[source]
        if "le" in self.base or any(name == "le" for name, _ in labels):  # where `le` goes is not at the end
            for _, name, row_labels, value in _histogram_rows(metric, dict(labels), histogram):
                lines.append(f"{name}{{{self.label_text(tuple(row_labels.items()))}}} {format_value(value)}\n")
            return
        text = self.label_text(labels)
        for bound, count in histogram.cumulative():
            lines.append(f'{metric.name}_bucket{{{text},le="{bound}"}} {format_value(count)}\n')
        lines.append(f"{metric.name}_sum{{{text}}} {format_value(histogram.total)}\n")
        lines.append(f"{metric.name}_count{{{text}}} {format_value(histogram.count)}\n")

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


def _metric_of(source: SeriesSource) -> Metric:
    return source.metric if isinstance(source, Sample) else source[0]


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
