"""The host collectors as one prometheus_client custom collector, registered in the agent's registry.

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
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector as RegistryCollector

from agents.host import COLLECTORS, enabled_collectors
from agents.host.base import Collector, CollectorSpec, Desc, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

log = logging.getLogger(__name__)

SCRAPE_DURATION = Desc(
    "node_scrape_collector_duration_seconds", "netmon host: Duration of a collector scrape.", labels=("collector",)
)
SCRAPE_SUCCESS = Desc("node_scrape_collector_success", "netmon host: Whether a collector succeeded.", labels=("collector",))


class _Families:
    """Families by metric name, in first-seen order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Family] = {}

    def add(self, reading: Reading) -> None:
        desc, label_values, value = reading
        family = self._by_name.get(desc.name)
        if family is None:
            base_name = desc.name[: -len("_total")] if desc.kind == "counter" else desc.name
            family = self._by_name[desc.name] = Family(base_name, desc.help, desc.kind)
        family.add_sample(desc.name, dict(zip(desc.labels, label_values)), value)

    def __iter__(self) -> Iterator[Family]:
        return iter(self._by_name.values())


class HostCollector(RegistryCollector):
    """Reads the current `host:` settings on every scrape (so a config reload applies at once)."""

    def __init__(self, settings: Callable[[], "HostConfig"], table: Mapping[str, CollectorSpec] = COLLECTORS) -> None:
        self._settings = settings
        self._table = table
        self._lock = threading.Lock()  # scrapes may come from several threads; collectors keep state
        self._built_for: HostConfig | None = None
        self._collectors: list[tuple[str, Collector]] = []
        self._failing: set[str] = set()

    def collect(self) -> Iterator[Family]:
        host = self._settings()
        if not host.enabled:
            return iter(())
        families = _Families()
        with self._lock:
            for name, collector in self._active(host):
                self._run(name, collector, families)
        return iter(families)

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

    def _run(self, name: str, collector: Collector, families: _Families) -> None:
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
        for reading in readings:
            families.add(reading)
        families.add(SCRAPE_DURATION(time.perf_counter() - started, name))
        families.add(SCRAPE_SUCCESS(success, name))
