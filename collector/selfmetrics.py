"""The collector's own metrics and the inventory's liveness series, in the collector's registry."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from collector.config_model import CollectorConfig
from collector.store import SeriesStore
from foundation import __version__

INGEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REJECT_REASONS = (
    "unauthorized", "bad_encoding", "bad_snappy", "too_large", "bad_protobuf", "invalid_metric_name", "invalid_label_name",
    "unsorted_labels", "duplicate_label", "missing_metric_name", "reserved_name", "overloaded", "invalid",
)


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        build = Gauge("netmon_collector_build_info", "Version of the netmon collector", ["version", "python_version"], registry=registry)
        build.labels(__version__, platform.python_version()).set(1)
        self.received = Counter(
            "netmon_collector_samples_received", "Samples stored, by how they came (push or pull)", ["mode"], registry=registry
        )
        self.rejected = Counter(
            "netmon_collector_samples_rejected", "Samples of refused pushes, by reason (0 when the body did not decode)",
            ["reason"], registry=registry,
        )
        self.requests = Counter(
            "netmon_collector_write_requests", "remote_write requests received, by reply code and reason", ["code", "reason"], registry=registry
        )
        self.ingest_seconds = Histogram(
            "netmon_collector_ingest_duration_seconds", "Time to decode, check, store and queue one push",
            buckets=INGEST_BUCKETS, registry=registry,
        )
        self.reload_ok = Gauge(
            "netmon_collector_config_last_reload_successful", "Whether the last configuration reload attempt was successful", registry=registry
        )
        self.reload_time = Gauge(
            "netmon_collector_config_last_reload_success_timestamp_seconds", "Timestamp of the last successful configuration load",
            registry=registry,
        )
        self.reload_ok.set(1)  # the config the collector started with
        self.reload_time.set_to_current_time()
        for mode in ("push", "pull"):
            self.received.labels(mode)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)


class InventoryCollector(Collector):
    """netmon_agent_up, netmon_agent_last_seen_timestamp_seconds, netmon_agency_info, netmon_collector_series,
    netmon_collector_samples_duplicate_total, netmon_collector_samples_dropped_total; `config` returns the current
    config (it follows reloads)."""

    def __init__(self, config: Callable[[], CollectorConfig], store: SeriesStore) -> None:
        self._config = config
        self._store = store

    def collect(self) -> Iterator[Family]:
        now = time.time()
        identity = ["agency", "agent", "district", "level"]
        up = GaugeMetricFamily("netmon_agent_up", "1 if the agent pushed or was scraped successfully within its TTL", labels=identity)
        last_seen = GaugeMetricFamily(
            "netmon_agent_last_seen_timestamp_seconds", "When the agent last pushed or was scraped (0: never)", labels=identity
        )
        for state in self._store.states.values():
            values = [value for _, value in state.agent.identity]
            up.add_metric(values, 1.0 if state.is_up(now) else 0.0)
            last_seen.add_metric(values, state.last_seen)
        info = GaugeMetricFamily("netmon_agency_info", "Inventory of agencies; `name` is the human name", labels=["agency", "name", "district", "level"])
        for agency in self._config().agencies:
            info.add_metric([agency.id, agency.name, agency.district, agency.level], 1.0)
        series = GaugeMetricFamily("netmon_collector_series", "Agent series currently exposed", value=self._store.series_count(now))
        duplicates = CounterMetricFamily(
            "netmon_collector_samples_duplicate",
            "Samples dropped because their series already had a sample at or after their timestamp (a batch sent again)",
            value=self._store.duplicate_samples,
        )
        dropped = CounterMetricFamily(
            "netmon_collector_samples_dropped",
            "Samples of accepted pushes dropped for timestamps outside ingest.max_sample_age / max_sample_in_future",
            labels=["reason"],
        )
        dropped.add_metric(["timestamp_too_old"], self._store.too_old_samples)
        dropped.add_metric(["timestamp_too_new"], self._store.too_new_samples)
        yield from (up, last_seen, info, series, duplicates, dropped)


class ConnectionsCollector(Collector):
    """netmon_collector_connections_refused_total: connections closed at once for being over the server's limit
    or one address's share of it (a slowloris client, or too many agents behind one NAT address)."""

    def __init__(self, refused: Callable[[], int]) -> None:
        self._refused = refused

    def collect(self) -> Iterator[Family]:
        yield CounterMetricFamily(
            "netmon_collector_connections_refused",
            "Connections closed at once for being over the connection limit or one address's share of it",
            value=self._refused(),
        )
