"""Push: every probe result goes, as remote_write series, through the durable queue to the collector.

The scheduler's result hook turns the target's state into the series /metrics shows at that moment, stamped with
the result's start time, and appends them to the queue as one record (a snappy WriteRequest); the agent's own,
process and host metrics follow on their own cadence. Queue, sender and their self-metrics are the foundation's
queued sender (foundation/sender.py), the same the collector's remote_write out runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Sequence

from prometheus_client.registry import Collector, CollectorRegistry

from agents import USER_AGENT
from agents.exposition import target_rows
from foundation.remote_write import Encoder, RemoteWriteError, Series
from foundation.sender import REASON_INVALID, QueuedSender, SenderMetrics, SenderNames

if TYPE_CHECKING:
    from agents.config.model import Target
    from agents.results import ProbeResult
    from agents.store import ResultStore, TargetState
    from foundation.config.remote_write import PushConfig

log = logging.getLogger(__name__)

METRICS_PREFIX = "netmon_agent_push"


def result_series(state: TargetState) -> list[Series]:
    """The series /metrics shows for this target now (the same rows, so push and pull agree),
    stamped with the start time of its latest result."""
    assert state.latest is not None
    timestamp_ms = int(state.latest.started_at * 1000)
    return [
        Series(tuple(sorted({**labels, "__name__": name}.items())), ((timestamp_ms, float(value)),))
        for _, name, labels, value in target_rows(state)
    ]


class Pusher:
    """The agent's push: result hook and self-metrics cadence -> the queued sender."""

    def __init__(self, config: PushConfig, store: ResultStore, pipeline: QueuedSender) -> None:
        self.config = config
        self.pipeline = pipeline
        self._store = store
        self._encoder = Encoder()
        self.collector = SenderMetrics(METRICS_PREFIX, lambda: (((), pipeline),))
        self._self_metrics: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, config: PushConfig, store: ResultStore, registry: CollectorRegistry, also: Sequence[Collector] = ()
    ) -> Pusher:
        """Open (and recover) the queue, start sending. Raises OSError if the queue cannot be opened.
        `also`: collectors pushed with the registry's though not in it (the host metrics)."""
        names = SenderNames(log, "push", "netmon-push-queue", USER_AGENT)
        pusher = cls(config, store, await QueuedSender.start(config, names))
        registry.register(pusher.collector)
        pusher._self_metrics = asyncio.create_task(
            pusher._push_registry_forever((registry, *also)), name="push:self-metrics"
        )
        log.info("pushing to %s, queue in %s", config.url, config.queue.directory)
        return pusher

    async def stop(self, registry: CollectorRegistry) -> None:
        if self._self_metrics is not None:
            self._self_metrics.cancel()
            await asyncio.gather(self._self_metrics, return_exceptions=True)
        await self.pipeline.stop()
        registry.unregister(self.collector)

    def on_result(self, target: Target, result: ProbeResult) -> None:
        """Scheduler hook, on the event loop right after the store recorded the result."""
        state = self._store.get(target.name)
        if state is None:
            return
        self._append(result_series(state), timestamp_ms_of(result), f"target {target.name}")

    def _append(self, series: list[Series], timestamp_ms: int, what: str) -> None:
        try:
            payload = self._encoder.encode(series)
        except RemoteWriteError as exc:
            log.error("push: series of %s cannot be encoded: %s", what, exc)
            self.pipeline.drop(REASON_INVALID, len(series))
            return
        self.pipeline.append(payload, len(series), timestamp_ms)

    async def _push_registry_forever(self, collectors: Sequence[Collector]) -> None:
        """The agent's own, process and host metrics (everything on /metrics that is not a probe result),
        so an agent behind NAT is as visible to the collector as a scraped one."""
        while True:
            await asyncio.sleep(float(self.config.self_metrics_interval))
            timestamp_ms = int(time.time() * 1000)
            series = registry_series(collectors, timestamp_ms)
            if series:
                self._append(series, timestamp_ms, "agent metrics")


def registry_series(collectors: Sequence[Collector], timestamp_ms: int) -> list[Series]:
    return [
        Series(tuple(sorted({**sample.labels, "__name__": sample.name}.items())), ((timestamp_ms, float(sample.value)),))
        for collector in collectors
        for family in collector.collect()
        for sample in family.samples
    ]


def timestamp_ms_of(result: ProbeResult) -> int:
    return int(result.started_at * 1000)
