"""remote_write out: what the collector stores goes on to a TSDB through the agent's durable queue and sender.

One `Forwarder` per `remote_write` entry. Every accepted push (and scrape, and expiry's stale markers) becomes
one queue record, encoded once for all of them; the sender (agents.push.RemoteWriteSender) batches records,
retries 5xx and network errors with backoff, honors 429 Retry-After and drops other 4xx, counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric as Family
from prometheus_client.registry import Collector

from agents.push import DROP_REASONS, REASON_IO_ERROR, REQUEST_RESULTS, HttpClient, RemoteWriteSender
from agents.push import endpoint_for, open_queue, send_policy  # the agent's own construction, same config shape
from foundation.queue import DurableQueue
from collector.config import RemoteWriteOut, remote_write_name

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, config: RemoteWriteOut, queue: DurableQueue, io: ThreadPoolExecutor) -> None:
        self.config = config
        self.name = remote_write_name(config)
        self.queue = queue
        self.io = io
        self.sender = RemoteWriteSender(queue, HttpClient(endpoint_for(config)), send_policy(config), io)
        self.dropped_items: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, config: RemoteWriteOut) -> Forwarder:
        io = ThreadPoolExecutor(1, thread_name_prefix="netmon-forward-queue")
        try:
            queue = await asyncio.get_running_loop().run_in_executor(io, open_queue, config)
        except BaseException:
            io.shutdown(wait=False)
            raise
        forwarder = cls(config, queue, io)
        forwarder._tasks = [
            asyncio.create_task(forwarder.sender.run(), name=f"forward:{forwarder.name}"),
            asyncio.create_task(forwarder._sync_forever(), name=f"forward-fsync:{forwarder.name}"),
        ]
        log.info("remote_write out to %s, queue in %s", config.url, config.queue.directory)
        return forwarder

    def append(self, payload: bytes, items: int, time_ms: int) -> None:
        try:
            self.queue.append(payload, items, time_ms)
        except OSError as exc:
            log.error("remote_write out %s: cannot append to the queue: %s", self.name, exc)
            self.dropped_items[REASON_IO_ERROR] = self.dropped_items.get(REASON_IO_ERROR, 0) + items
            return
        if self.queue.pending_items() >= self.config.batch_max_samples:
            self.sender.wake()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sender.client.close()
        await asyncio.get_running_loop().run_in_executor(self.io, self.queue.close)
        self.io.shutdown(wait=True)

    async def _sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(float(self.config.queue.fsync_interval))
            await loop.run_in_executor(self.io, self.queue.sync)


class ForwardCollector(Collector):
    """netmon_collector_remote_write_*{remote}: read from the queues and senders when scraped."""

    def __init__(self, forwarders: list[Forwarder]) -> None:
        self._forwarders = forwarders

    def collect(self) -> Iterator[Family]:
        prefix = "netmon_collector_remote_write"
        sent = CounterMetricFamily(f"{prefix}_samples_sent", "Samples the remote acknowledged with a 2xx", labels=["remote"])
        dropped = CounterMetricFamily(f"{prefix}_samples_dropped", "Samples given up without delivery, by reason", labels=["remote", "reason"])
        requests = CounterMetricFamily(f"{prefix}_requests", "remote_write requests by outcome", labels=["remote", "result"])
        pending = GaugeMetricFamily(f"{prefix}_queue_pending_samples", "Samples in the queue not yet acknowledged", labels=["remote"])
        disk = GaugeMetricFamily(f"{prefix}_queue_bytes", "Bytes of the queue's segment files on disk", labels=["remote"])
        oldest = GaugeMetricFamily(
            f"{prefix}_oldest_unsent_age_seconds", "Age of the oldest sample not yet acknowledged (0 when none waits)", labels=["remote"]
        )
        now = time.time()
        for forwarder in self._forwarders:
            queue, stats, name = forwarder.queue, forwarder.sender.stats, forwarder.name
            sent.add_metric([name], stats.sent_items)
            for reason in DROP_REASONS:
                total = queue.stats.dropped_items.get(reason, 0) + stats.dropped_items.get(reason, 0)
                dropped.add_metric([name, reason], total + forwarder.dropped_items.get(reason, 0))
            for result in REQUEST_RESULTS:
                requests.add_metric([name, result], stats.requests.get(result, 0))
            pending.add_metric([name], queue.pending_items())
            disk.add_metric([name], queue.disk_bytes())
            oldest_time = queue.oldest_pending_time()
            oldest.add_metric([name], max(now - oldest_time, 0.0) if oldest_time is not None else 0.0)
        yield from (sent, dropped, requests, pending, disk, oldest)
