"""The queued sender: records (each a remote_write body) wait in a durable queue until a receiver acknowledged them.
The agent's push and each of the collector's remote_write outs run one; they differ only in what they append and
in the names they log and export under.

- `QueuedSender`: the pipeline. Opens (and recovers) the queue on its own I/O thread, appends, runs the
  sender and the fsync cadence, and counts what it could not even queue.
- `RemoteWriteSender`: queue -> batches -> HTTP POST, retrying 5xx and network errors with capped exponential
  backoff, honoring 429 Retry-After, keeping batches a 401/403 refuses queued (a credential is fixed by an
  operator, the batch is fine), dropping (counted) what any other 4xx refuses.
- `SenderMetrics`: the pipelines' self-metrics under the owner's prefix (`netmon_agent_push_*`,
  `netmon_collector_remote_write_*{remote}`), read from the queues and senders when scraped.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from foundation.httpclient import Endpoint, HttpClient, ProtocolError, Reply
from foundation.queue import REASON_AGE, REASON_BYTES, REASON_CORRUPT, REASON_DISK_FULL, Batch, DurableQueue, QueueLimits
from foundation.remote_write import HEADERS, RemoteWriteError, join_bodies

if TYPE_CHECKING:
    from foundation.config.remote_write import PushConfig

log = logging.getLogger(__name__)

REASON_REJECTED = "rejected"  # a 4xx other than 429: the receiver will never take it
REASON_INVALID = "invalid"  # not encodable (a bug upstream), or a queued record that no longer decodes
REASON_IO_ERROR = "io_error"  # the queue directory failed in a way other than a full disk
DROP_REASONS = (REASON_BYTES, REASON_AGE, REASON_DISK_FULL, REASON_CORRUPT, REASON_REJECTED, REASON_INVALID, REASON_IO_ERROR)
REQUEST_RESULTS = ("success", "rejected", "unauthorized", "throttled", "server_error", "network_error")
# A refused credential is an operator's fix (a token rotated on one side first), not a bad batch: keep it queued.
CREDENTIAL_REFUSED = (401, 403)

MAX_RECORD_DECOMPRESSED_BYTES = 64 << 20
BATCH_MAX_BYTES = 4 << 20  # compressed record bytes per request
MAX_SEGMENT_BYTES = 8 << 20
MAX_RETRY_AFTER_SECONDS = 600.0  # a receiver asking for longer is trusted only this far
REPLY_TEXT_LIMIT = 512  # bytes of an error reply kept for the log


@dataclass(slots=True)
class SenderStats:
    sent_items: int = 0
    dropped_items: dict[str, int] = field(default_factory=dict)  # rejected / invalid
    requests: dict[str, int] = field(default_factory=dict)  # by result
    last_success: float = 0.0  # unix time of the last 2xx

    def count(self, result: str) -> None:
        self.requests[result] = self.requests.get(result, 0) + 1

    def drop(self, reason: str, items: int) -> None:
        self.dropped_items[reason] = self.dropped_items.get(reason, 0) + items


@dataclass(frozen=True, slots=True)
class SendPolicy:
    interval: float  # after the queue is drained, how long new samples gather before the next send
    batch_max_samples: int
    min_backoff: float
    max_backoff: float
    batch_max_bytes: int = BATCH_MAX_BYTES

    def backoff(self, failures: int) -> float:
        """Capped exponential, jittered so that many senders do not return all at once."""
        ceiling = min(self.max_backoff, self.min_backoff * 2 ** min(failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class SenderNames:
    """How one pipeline names itself to the people who run it."""

    log: logging.Logger  # the owner's logger: operators filter on it
    prefix: str  # starts its log lines and names its tasks: "push", "remote_write out tsdb"
    thread: str  # its queue's I/O thread, e.g. "netmon-push-queue"
    user_agent: str


class RemoteWriteSender:
    """Sends a DurableQueue's records (each a remote_write body) in order, one request at a time."""

    def __init__(
        self, queue: DurableQueue, client: HttpClient, policy: SendPolicy, io: ThreadPoolExecutor,
        logger: logging.Logger = log, prefix: str = "remote_write",
    ) -> None:
        self.queue = queue
        self.client = client
        self.policy = policy
        self.stats = SenderStats()
        self._io = io  # queue reads and acks block on disk: one worker thread keeps them in order
        self._log = logger
        self._prefix = prefix
        self._wake = asyncio.Event()
        self._failures = 0

    def wake(self) -> None:
        """Send now rather than at the end of the interval (a full batch is waiting)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                delay = await self._send_next()
            except Exception:  # noqa: BLE001 - a dead sender would stop sending silently
                self._log.exception("%s: unexpected error; retrying", self._prefix)
                delay = self.policy.max_backoff
            if delay:
                await asyncio.sleep(delay)

    async def _send_next(self) -> float:
        loop = asyncio.get_running_loop()
        batch = await loop.run_in_executor(self._io, self.queue.peek, self.policy.batch_max_samples, self.policy.batch_max_bytes)
        if batch is None:
            await self._gather_samples()
            return 0.0
        return await self._deliver(batch)

    async def _gather_samples(self) -> None:
        """The queue is drained: let samples gather for an interval, or until a batch is full."""
        try:
            await asyncio.wait_for(self._wake.wait(), self.policy.interval)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _deliver(self, batch: Batch) -> float:
        """Send one batch; the seconds to wait before trying again (0: done with it)."""
        try:
            body = join_bodies(batch.payloads, MAX_RECORD_DECOMPRESSED_BYTES)
        except RemoteWriteError as exc:
            self._log.error("%s: dropping %d queued samples that no longer decode: %s", self._prefix, batch.items, exc)
            return await self._settle(batch, REASON_INVALID)
        try:
            reply = await self.client.post(body, HEADERS, max_body=REPLY_TEXT_LIMIT, truncate=True)
        except (OSError, TimeoutError, ProtocolError) as exc:
            return self._retry("network_error", f"{type(exc).__name__}: {exc}")
        return await self._answered(batch, reply)

    async def _answered(self, batch: Batch, reply: Reply) -> float:
        text = reply.text.strip()[:200]
        if 200 <= reply.status < 300:
            return await self._settle(batch, None)
        if reply.status == 429:
            return self._retry("throttled", f"429 {text}", retry_after(reply.headers.get("retry-after")))
        if reply.status >= 500:
            return self._retry("server_error", f"{reply.status} {text}")
        if reply.status in CREDENTIAL_REFUSED:
            return self._retry("unauthorized", f"{reply.status} {text}; check the push credential")
        self._log.error(
            "%s: %s refused %d samples with %d, dropped (not retried): %s",
            self._prefix, self.client.endpoint.url, batch.items, reply.status, text,
        )
        self.stats.count("rejected")
        return await self._settle(batch, REASON_REJECTED)

    async def _settle(self, batch: Batch, dropped: str | None) -> float:
        """The receiver answered for good: acknowledge, so nothing is sent twice."""
        await asyncio.get_running_loop().run_in_executor(self._io, self.queue.ack, batch)
        if dropped is not None:
            self.stats.drop(dropped, batch.items)
            return 0.0
        self.stats.count("success")
        self.stats.sent_items += batch.items
        self.stats.last_success = time.time()
        if self._failures:
            self._log.info("%s: %s reachable again after %d failed attempts", self._prefix, self.client.endpoint.url, self._failures)
        self._failures = 0
        return 0.0

    def _retry(self, result: str, detail: str, wait: float | None = None) -> float:
        self.stats.count(result)
        self._failures += 1
        delay = min(wait, MAX_RETRY_AFTER_SECONDS) if wait is not None else self.policy.backoff(self._failures)
        if self._failures == 1:  # once per outage, not once per attempt
            self._log.warning(
                "%s: %s failed (%s); retrying with backoff, samples wait in the queue", self._prefix, self.client.endpoint.url, detail
            )
        else:
            self._log.debug("%s: attempt %d failed (%s); next in %.1fs", self._prefix, self._failures, detail, delay)
        return delay


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class QueuedSender:
    """One durable queue and the sender that empties it, with its I/O thread and fsync cadence."""

    def __init__(self, config: PushConfig, queue: DurableQueue, io: ThreadPoolExecutor, names: SenderNames) -> None:
        self.config = config
        self.queue = queue
        self.names = names
        self._io = io
        client = HttpClient(endpoint_for(config), names.user_agent)
        self.sender = RemoteWriteSender(queue, client, send_policy(config), io, names.log, names.prefix)
        self.dropped_items: dict[str, int] = {}  # never queued: not encodable, queue I/O errors
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, config: PushConfig, names: SenderNames) -> QueuedSender:
        """Open (and recover) the queue, start sending. Raises OSError if the queue cannot be opened."""
        io = ThreadPoolExecutor(1, thread_name_prefix=names.thread)
        try:
            queue = await asyncio.get_running_loop().run_in_executor(io, open_queue, config)
        except BaseException:
            io.shutdown(wait=False)
            raise
        pipeline = cls(config, queue, io, names)
        pipeline._tasks = [
            asyncio.create_task(pipeline.sender.run(), name=f"{names.prefix}:sender"),
            asyncio.create_task(pipeline._sync_forever(), name=f"{names.prefix}:fsync"),
        ]
        return pipeline

    def append(self, payload: bytes, items: int, time_ms: int) -> None:
        """One record (a remote_write body of `items` samples, the oldest at time_ms), on the event loop."""
        try:
            self.queue.append(payload, items, time_ms)
        except OSError as exc:
            self.names.log.error("%s: cannot append to the queue in %s: %s", self.names.prefix, self.config.queue.directory, exc)
            self.drop(REASON_IO_ERROR, items)
            return
        if self.queue.pending_items() >= self.config.batch_max_samples:
            self.sender.wake()

    def drop(self, reason: str, items: int) -> None:
        """Count samples given up before they reached the queue."""
        self.dropped_items[reason] = self.dropped_items.get(reason, 0) + items

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sender.client.close()
        # Same single worker thread: runs after any read or ack still in flight.
        await asyncio.get_running_loop().run_in_executor(self._io, self.queue.close)
        self._io.shutdown(wait=True)

    def dropped(self, reason: str) -> int:
        """Samples given up for this reason anywhere: before the queue, in it, or by the receiver."""
        before, in_queue = self.dropped_items.get(reason, 0), self.queue.stats.dropped_items.get(reason, 0)
        return before + in_queue + self.sender.stats.dropped_items.get(reason, 0)

    async def _sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(float(self.config.queue.fsync_interval))
            await loop.run_in_executor(self._io, self.queue.sync)


def open_queue(config: PushConfig) -> DurableQueue:
    limits = QueueLimits(
        max_bytes=config.queue.max_bytes,
        max_age=float(config.queue.max_age),
        segment_bytes=min(MAX_SEGMENT_BYTES, config.queue.max_bytes // 8),
    )
    return DurableQueue(config.queue.directory, limits)


def endpoint_for(config: PushConfig) -> Endpoint:
    return Endpoint.configured(config.url, float(config.timeout), config.tls, config.bearer_token or config.bearer_token_file)


def send_policy(config: PushConfig) -> SendPolicy:
    return SendPolicy(float(config.interval), config.batch_max_samples, float(config.min_backoff), float(config.max_backoff))


# --- self-metrics

Labeled = tuple[tuple[str, ...], QueuedSender]  # a pipeline and its label values
Families = dict[str, CounterMetricFamily | GaugeMetricFamily]

ALL_FAMILIES = (
    "samples_queued", "samples_sent", "samples_dropped", "requests", "queue_corrupt_records",
    "queue_bytes", "queue_pending_samples", "oldest_unsent_age_seconds", "last_success_timestamp_seconds",
)


class SenderMetrics(Collector):
    """`{prefix}_*` of every pipeline `pipelines()` returns at scrape time, each with its label values."""

    def __init__(
        self, prefix: str, pipelines: Callable[[], Iterable[Labeled]], label_names: tuple[str, ...] = (),
        families: tuple[str, ...] = ALL_FAMILIES,
    ) -> None:
        self._prefix = prefix
        self._pipelines = pipelines
        self._label_names = list(label_names)
        self._families = families  # which of ALL_FAMILIES, in this order

    def collect(self) -> Iterator[Family]:
        families = self._empty_families()
        now = time.time()
        for values, pipeline in self._pipelines():
            self._add(families, list(values), pipeline, now)
        yield from (families[name] for name in self._families)

    def _empty_families(self) -> Families:
        def counter(name: str, help_text: str, *extra: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{self._prefix}_{name}", help_text, labels=[*self._label_names, *extra])

        def gauge(name: str, help_text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{self._prefix}_{name}", help_text, labels=self._label_names)

        return {
            "samples_queued": counter("samples_queued", "Samples appended to the queue"),
            "samples_sent": counter("samples_sent", "Samples the receiver acknowledged with a 2xx"),
            "samples_dropped": counter("samples_dropped", "Samples given up without delivery, by reason", "reason"),
            "requests": counter("requests", "remote_write requests by outcome", "result"),
            "queue_corrupt_records": counter(
                "queue_corrupt_records", "Places in the queue where a record failed its checksum and was skipped"
            ),
            "queue_bytes": gauge("queue_bytes", "Bytes of the queue's segment files on disk"),
            "queue_pending_samples": gauge("queue_pending_samples", "Samples in the queue not yet acknowledged"),
            "oldest_unsent_age_seconds": gauge(
                "oldest_unsent_age_seconds", "Age of the oldest sample not yet acknowledged (0 when none waits)"
            ),
            "last_success_timestamp_seconds": gauge(
                "last_success_timestamp_seconds", "When the receiver last acknowledged a request"
            ),
        }

    @staticmethod
    def _add(families: Families, values: list[str], pipeline: QueuedSender, now: float) -> None:
        queue, stats = pipeline.queue, pipeline.sender.stats
        oldest = queue.oldest_pending_time()
        families["samples_queued"].add_metric(values, queue.stats.appended_items)
        families["samples_sent"].add_metric(values, stats.sent_items)
        for reason in DROP_REASONS:
            families["samples_dropped"].add_metric([*values, reason], pipeline.dropped(reason))
        for result in REQUEST_RESULTS:
            families["requests"].add_metric([*values, result], stats.requests.get(result, 0))
        families["queue_corrupt_records"].add_metric(values, queue.stats.corrupt_records)
        families["queue_bytes"].add_metric(values, queue.disk_bytes())
        families["queue_pending_samples"].add_metric(values, queue.pending_items())
        families["oldest_unsent_age_seconds"].add_metric(values, max(now - oldest, 0.0) if oldest is not None else 0.0)
        families["last_success_timestamp_seconds"].add_metric(values, stats.last_success)
