"""The host collectors as one collector: text for /metrics (render), prometheus_client families for push (collect).

Collected on scrape, as node_exporter does: every collector reads /proc, /sys or psutil when
/metrics is asked for, so counters are exact at scrape time and nothing runs between scrapes.
All of it together costs well under a millisecond of CPU (docs/benchmarks.md); the only call that
can block for long, statfs on a hung mount, is bounded by host.filesystem.mount_timeout (see
agents/host/stall.py). A collector that raises is reported with node_scrape_collector_success 0 and
does not affect the others.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector as RegistryCollector

from agents.host import COLLECTORS, enabled_collectors
from agents.host.base import Collector, CollectorSpec, Desc, Reading
from foundation.textformat import family_header, format_value, label_pairs

if TYPE_CHECKING:
    from agents.host.config import HostConfig

log = logging.getLogger(__name__)

SCRAPE_DURATION = Desc(
    "node_scrape_collector_duration_seconds", "netmon host: Duration of a collector scrape.", labels=("collector",)
)
SCRAPE_SUCCESS = Desc("node_scrape_collector_success", "netmon host: Whether a collector succeeded.", labels=("collector",))


Group = tuple[Desc, list[tuple[tuple[str, ...], float]]]  # one family: its desc, each series' label values and value
MAX_CACHED_SERIES = 20_000  # series prefixes kept between scrapes; more (label values that keep changing) starts over


class _Scrape:
    """One pass's readings grouped by metric name, in first-seen order (the order the text format needs)."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    def add(self, readings: Iterable[Reading]) -> None:
        groups = self.groups
        for desc, label_values, value in readings:
            group = groups.get(desc.name)
            if group is None:
                group = groups[desc.name] = (desc, [])
            group[1].append((label_values, value))

    def families(self) -> Iterator[Family]:
        for desc, series in self.groups.values():
            base_name = desc.name[: -len("_total")] if desc.kind == "counter" else desc.name
            family = Family(base_name, desc.help, desc.kind)
            for label_values, value in series:
                family.add_sample(desc.name, dict(zip(desc.labels, label_values)), value)
            yield family


class _TextCache:
    """Each family's header and each series' `name{labels} ` as text, made once and reused every scrape: the
    same bytes render_families writes from prometheus_client families (labels in name order), without them."""

    def __init__(self) -> None:
        # keyed by metric name, not Desc: a frozen dataclass hashes all its fields on every lookup
        self._headers: dict[str, str] = {}
        self._prefixes: dict[tuple[str, tuple[str, ...]], str] = {}

    def render(self, scrape: _Scrape) -> str:
        prefixes = self._prefixes
        if len(prefixes) > MAX_CACHED_SERIES:
            prefixes.clear()
        lines = []
        for name, (desc, series) in scrape.groups.items():
            lines.append(self._header(desc))
            for label_values, value in series:
                prefix = prefixes.get((name, label_values))
                if prefix is None:
                    prefix = prefixes[(name, label_values)] = _series_prefix(desc, label_values)
                lines.append(f"{prefix}{format_value(value)}\n")
        return "".join(lines)

    def _header(self, desc: Desc) -> str:
        header = self._headers.get(desc.name)
        if header is None:
            header = self._headers[desc.name] = family_header(desc.name, desc.help, desc.kind)
        return header


def _series_prefix(desc: Desc, label_values: tuple[str, ...]) -> str:
    if not desc.labels:
        return f"{desc.name} "
    return f"{desc.name}{{{label_pairs(sorted(zip(desc.labels, label_values)))}}} "


class HostCollector(RegistryCollector):
    """Reads the current `host:` settings on every scrape (so a config reload applies at once)."""

    def __init__(self, settings: Callable[[], "HostConfig"], table: Mapping[str, CollectorSpec] = COLLECTORS) -> None:
        self._settings = settings
        self._table = table
        self._lock = threading.Lock()  # scrapes may come from several threads; collectors keep state
        self._built_for: HostConfig | None = None
        self._collectors: list[tuple[str, Collector]] = []
        self._failing: set[str] = set()
        self._text = _TextCache()

    def collect(self) -> Iterator[Family]:
        """prometheus_client families, for push and for registries; /metrics writes render() instead."""
        return self._scrape().families()

    def render(self) -> str:
        """Every host series now in the text format, the bytes render_families would write for collect()."""
        scrape = self._scrape()
        with self._lock:
            return self._text.render(scrape)

    def _scrape(self) -> _Scrape:
        scrape = _Scrape()
        host = self._settings()
        if host.enabled:
            with self._lock:
                for name, collector in self._active(host):
                    self._run(name, collector, scrape)
        return scrape

    def _active(self, host: "HostConfig") -> list[tuple[str, Collector]]:
        if host != self._built_for:
            self._collectors = []
            for spec in enabled_collectors(host, self._table):
                if spec.available():
                    self._collectors.append((spec.name, spec.build(host)))
                else:
                    log.info("host collector %s: not available on this platform", spec.name)
            self._built_for = host
        return self._collectors

    def _run(self, name: str, collector: Collector, scrape: _Scrape) -> None:
        started = time.perf_counter()
        try:
            readings = list(collector.collect())
        except Exception:  # noqa: BLE001 - one broken collector must not take /metrics down
            readings, success = [], 0.0
            if name not in self._failing:
                log.exception("host collector %s failed; reporting node_scrape_collector_success 0 until it recovers", name)
                self._failing.add(name)
        else:
            success = 1.0
            if name in self._failing:
                log.info("host collector %s recovered", name)
                self._failing.discard(name)
        scrape.add(readings)
        scrape.add((SCRAPE_DURATION(time.perf_counter() - started, name), SCRAPE_SUCCESS(success, name)))
