"""remote_write out: what the collector stores goes on to a TSDB through the foundation's queued sender.

One `Forwarder` per `remote_write` entry. Every accepted push (and scrape, and expiry's stale markers) becomes
one queue record, encoded once for all of them; the sender (foundation/sender.py) batches records, retries 5xx
and network errors with backoff, honors 429 Retry-After and drops other 4xx, counted.
"""

from __future__ import annotations

import logging

from collector.config import RemoteWriteOut, remote_write_name
from foundation import __version__
from foundation.remote_write import BlockSeries
from foundation.sender import Labeled, QueuedSender, SenderMetrics, SenderNames

log = logging.getLogger(__name__)

METRICS_PREFIX = "netmon_collector_remote_write"
METRICS_FAMILIES = (
    "samples_sent", "samples_dropped", "requests", "queue_pending_samples", "queue_bytes", "oldest_unsent_age_seconds",
)
USER_AGENT = f"netmon-collector/{__version__}"


def split_by_samples(series: list[BlockSeries], limit: int) -> list[list[BlockSeries]]:
    """Records of at most `limit` samples (a series with more stays whole). The sender sends a record whole, so one
    record must fit a batch: the stale markers of thousands of agents expiring together (a cold restart with many
    agents silent past their TTL) were one record of 220,600 samples, 41 MB unpacked, which VictoriaMetrics refuses
    with 400 beyond its -maxInsertRequestSize of 32 MB; the sender then drops it (national_sim.py found it)."""
    if sum(len(samples) for _, samples in series) <= limit:
        return [series]
    parts: list[list[BlockSeries]] = []
    part: list[BlockSeries] = []
    count = 0
    for one in series:
        if part and count + len(one[1]) > limit:
            parts.append(part)
            part, count = [], 0
        part.append(one)
        count += len(one[1])
    return parts + [part] if part else parts


class Forwarder:
    """One remote_write out: its name (the `remote` label) and its queued sender."""

    def __init__(self, config: RemoteWriteOut, name: str, pipeline: QueuedSender) -> None:
        self.config = config
        self.name = name
        self.pipeline = pipeline

    @classmethod
    async def start(cls, config: RemoteWriteOut) -> Forwarder:
        """Raises OSError if the queue cannot be opened."""
        name = remote_write_name(config)
        names = SenderNames(log, f"remote_write out {name}", "netmon-forward-queue", USER_AGENT)
        forwarder = cls(config, name, await QueuedSender.start(config, names))
        log.info("remote_write out to %s, queue in %s", config.url, config.queue.directory)
        return forwarder

    def append(self, payload: bytes, items: int, time_ms: int) -> None:
        self.pipeline.append(payload, items, time_ms)

    async def stop(self) -> None:
        await self.pipeline.stop()


class ForwardCollector(SenderMetrics):
    """netmon_collector_remote_write_*{remote}: read from the queues and senders when scraped."""

    def __init__(self, forwarders: list[Forwarder]) -> None:
        def labeled() -> list[Labeled]:
            return [((forwarder.name,), forwarder.pipeline) for forwarder in forwarders]  # the list app.py keeps current

        super().__init__(METRICS_PREFIX, labeled, ("remote",), METRICS_FAMILIES)
