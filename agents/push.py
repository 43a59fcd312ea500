"""Push: every probe result goes, as remote_write series, through the durable queue to the collector.

- `Pusher` (agent side): the scheduler's result hook turns the target's state into the series /metrics
  shows at that moment, stamped with the result's start time, and appends them to the queue as one
  record (a snappy WriteRequest). It runs the sender and the fsync cadence.
- `RemoteWriteSender`: queue -> batches -> HTTP POST, retrying 5xx and network errors with capped
  exponential backoff, honoring 429 Retry-After, keeping batches a 401/403 refuses queued (a credential is
  fixed by an operator, the batch is fine), dropping (counted) what any other 4xx refuses. It knows
  nothing of the agent: the collector's remote_write out uses it with its own queue.
- `HttpClient`: one kept-alive HTTP/1.1 connection over asyncio streams (TLS with a CA bundle); no
  aiohttp/httpx, which would cost more memory than the whole agent's budget allows.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric as Family
from prometheus_client.registry import Collector, CollectorRegistry

from foundation import __version__
from foundation.config.types import Secret
from agents.exposition import target_rows
from foundation.queue import (
    REASON_AGE,
    REASON_BYTES,
    REASON_CORRUPT,
    REASON_DISK_FULL,
    Batch,
    DurableQueue,
    QueueLimits,
)
from foundation.remote_write import HEADERS, Encoder, RemoteWriteError, Series, join_bodies

if TYPE_CHECKING:
    from agents.config.model import Target
    from foundation.config.remote_write import PushConfig, PushTls
    from agents.results import ProbeResult
    from agents.store import ResultStore, TargetState

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
MAX_HEADER_LINES = 100


class ProtocolError(Exception):
    """The receiver's reply is not HTTP/1.1 we understand."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to POST: parsed once from a URL and TLS settings."""

    url: str
    host: str
    port: int
    target: str  # path and query
    ssl_context: ssl.SSLContext | None
    server_hostname: str | None
    timeout: float
    authorization: Secret | None = None  # the whole header value, e.g. "Bearer ..."

    @classmethod
    def from_url(
        cls, url: str, timeout: float, ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None, authorization: Secret | None = None,
    ) -> Endpoint:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        if https and ssl_context is None:
            ssl_context = ssl.create_default_context()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = parts.port or (443 if https else 80)
        host = parts.hostname or ""
        server_hostname = (server_name or host) if https else None
        return cls(url, host, port, target, ssl_context if https else None, server_hostname, timeout, authorization)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.ssl_context else 80
        return host if self.port == default else f"{host}:{self.port}"


def push_ssl_context(tls: PushTls) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    retry_after: float | None  # seconds, from Retry-After
    text: str  # the start of the body, for the log


class HttpClient:
    """POSTs to one endpoint over one kept-alive HTTP/1.1 connection, reconnecting when it is gone."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: tuple[tuple[str, str], ...] = HEADERS) -> Reply:
        """Raises OSError, TimeoutError or ProtocolError when no reply came."""
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                if self._writer is not None:
                    try:
                        return await self._exchange(body, headers)
                    except (OSError, asyncio.IncompleteReadError):
                        self.close()  # the server closed the idle connection: once more on a new one
                return await self._exchange(body, headers)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise ProtocolError(f"incomplete or oversized reply: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None

    async def _exchange(self, body: bytes, headers: tuple[tuple[str, str], ...]) -> Reply:
        if self._writer is None:
            endpoint = self.endpoint
            self._reader, self._writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=endpoint.ssl_context, server_hostname=endpoint.server_hostname
            )
        assert self._reader is not None
        self._writer.write(self._request_head(len(body), headers) + body)
        await self._writer.drain()
        version, status = _parse_status_line(await self._reader.readuntil(b"\r\n"))
        reply_headers = await _read_headers(self._reader)
        text, complete = ("", True) if status in (204, 304) else await _read_body(self._reader, reply_headers)
        if not complete or version != "HTTP/1.1" or "close" in reply_headers.get("connection", "").lower():
            self.close()
        return Reply(status, _retry_after(reply_headers.get("retry-after")), text)

    def _request_head(self, length: int, headers: tuple[tuple[str, str], ...]) -> bytes:
        lines = [
            f"POST {self.endpoint.target} HTTP/1.1",
            f"Host: {self.endpoint.host_header}",
            f"User-Agent: netmon-agent/{__version__}",
            f"Content-Length: {length}",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if self.endpoint.authorization is not None:
            lines.append(f"Authorization: {self.endpoint.authorization.reveal()}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_status_line(line: bytes) -> tuple[str, int]:
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP status line: {line[:60]!r}")
    return parts[0], int(parts[1])


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
        if not line:
            return headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ProtocolError(f"more than {MAX_HEADER_LINES} header lines")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[str, bool]:
    """The body's start as text, and whether the connection can carry another request."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader), True
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        data = await reader.read(REPLY_TEXT_LIMIT)  # delimited by close: never reused
        return data.decode("utf-8", "replace"), False
    kept = await reader.readexactly(min(int(length), REPLY_TEXT_LIMIT))
    if int(length) > REPLY_TEXT_LIMIT:
        return kept.decode("utf-8", "replace"), False
    return kept.decode("utf-8", "replace"), True


async def _read_chunked(reader: asyncio.StreamReader) -> str:
    kept = b""
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return kept.decode("utf-8", "replace")
        chunk = await reader.readexactly(size + 2)
        kept = (kept + chunk[:-2])[:REPLY_TEXT_LIMIT]


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


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


class RemoteWriteSender:
    """Sends a DurableQueue's records (each a remote_write body) in order, one request at a time."""

    def __init__(self, queue: DurableQueue, client: HttpClient, policy: SendPolicy, io: ThreadPoolExecutor) -> None:
        self.queue = queue
        self.client = client
        self.policy = policy
        self.stats = SenderStats()
        self._io = io  # queue reads and acks block on disk: one worker thread keeps them in order
        self._wake = asyncio.Event()
        self._failures = 0

    def wake(self) -> None:
        """Send now rather than at the end of the interval (a full batch is waiting)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                delay = await self._send_next()
            except Exception:  # noqa: BLE001 - a dead sender would stop pushing silently
                log.exception("push: unexpected error; retrying")
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
            log.error("push: dropping %d queued samples that no longer decode: %s", batch.items, exc)
            return await self._settle(batch, REASON_INVALID)
        try:
            reply = await self.client.post(body)
        except (OSError, TimeoutError, ProtocolError) as exc:
            return self._retry("network_error", f"{type(exc).__name__}: {exc}")
        if 200 <= reply.status < 300:
            return await self._settle(batch, None)
        if reply.status == 429:
            return self._retry("throttled", f"429 {reply.text.strip()[:200]}", reply.retry_after)
        if reply.status >= 500:
            return self._retry("server_error", f"{reply.status} {reply.text.strip()[:200]}")
        if reply.status in CREDENTIAL_REFUSED:
            return self._retry("unauthorized", f"{reply.status} {reply.text.strip()[:200]}; check the push credential")
        log.error(
            "push: %s refused %d samples with %d, dropped (not retried): %s",
            self.client.endpoint.url, batch.items, reply.status, reply.text.strip()[:200],
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
            log.info("push: %s reachable again after %d failed attempts", self.client.endpoint.url, self._failures)
        self._failures = 0
        return 0.0

    def _retry(self, result: str, detail: str, wait: float | None = None) -> float:
        self.stats.count(result)
        self._failures += 1
        delay = min(wait, MAX_RETRY_AFTER_SECONDS) if wait is not None else self.policy.backoff(self._failures)
        if self._failures == 1:  # once per outage, not once per attempt
            log.warning("push: %s failed (%s); retrying with backoff, samples wait in the queue", self.client.endpoint.url, detail)
        else:
            log.debug("push: attempt %d failed (%s); next in %.1fs", self._failures, detail, delay)
        return delay


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
    """The agent's push: result hook -> queue -> sender, plus the fsync cadence and self-metrics."""

    def __init__(self, config: PushConfig, store: ResultStore, queue: DurableQueue, io: ThreadPoolExecutor) -> None:
        self.config = config
        self.queue = queue
        self._store = store
        self._io = io
        self._encoder = Encoder()
        self.dropped_items: dict[str, int] = {}  # before the queue: invalid series, queue I/O errors
        self.sender = RemoteWriteSender(queue, HttpClient(endpoint_for(config)), send_policy(config), io)
        self.collector = PushCollector(self)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, config: PushConfig, store: ResultStore, registry: CollectorRegistry) -> Pusher:
        """Open (and recover) the queue, start sending. Raises OSError if the queue cannot be opened."""
        io = ThreadPoolExecutor(1, thread_name_prefix="netmon-push-queue")
        try:
            queue = await asyncio.get_running_loop().run_in_executor(io, open_queue, config)
        except BaseException:
            io.shutdown(wait=False)
            raise
        pusher = cls(config, store, queue, io)
        registry.register(pusher.collector)
        pusher._tasks = [
            asyncio.create_task(pusher.sender.run(), name="push:sender"),
            asyncio.create_task(pusher._sync_forever(), name="push:fsync"),
            asyncio.create_task(pusher._push_registry_forever(registry), name="push:self-metrics"),
        ]
        log.info("pushing to %s, queue in %s", config.url, config.queue.directory)
        return pusher

    async def stop(self, registry: CollectorRegistry) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sender.client.close()
        # Same single worker thread: runs after any read or ack still in flight.
        await asyncio.get_running_loop().run_in_executor(self._io, self.queue.close)
        self._io.shutdown(wait=True)
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
            self._drop(REASON_INVALID, len(series))
            return
        try:
            self.queue.append(payload, len(series), timestamp_ms)
        except OSError as exc:
            log.error("push: cannot append to the queue in %s: %s", self.config.queue.directory, exc)
            self._drop(REASON_IO_ERROR, len(series))
            return
        if self.queue.pending_items() >= self.config.batch_max_samples:
            self.sender.wake()

    def _drop(self, reason: str, items: int) -> None:
        self.dropped_items[reason] = self.dropped_items.get(reason, 0) + items

    async def _push_registry_forever(self, registry: CollectorRegistry) -> None:
        """The agent's own, process and host metrics (everything on /metrics that is not a probe result),
        so an agent behind NAT is as visible to the collector as a scraped one."""
        while True:
            await asyncio.sleep(float(self.config.self_metrics_interval))
            timestamp_ms = int(time.time() * 1000)
            series = registry_series(registry, timestamp_ms)
            if series:
                self._append(series, timestamp_ms, "agent metrics")

    async def _sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.queue.fsync_interval)
            await loop.run_in_executor(self._io, self.queue.sync)


def registry_series(registry: CollectorRegistry, timestamp_ms: int) -> list[Series]:
    return [
        Series(tuple(sorted({**sample.labels, "__name__": sample.name}.items())), ((timestamp_ms, float(sample.value)),))
        for family in registry.collect()
        for sample in family.samples
    ]


def timestamp_ms_of(result: ProbeResult) -> int:
    return int(result.started_at * 1000)


def open_queue(config: PushConfig) -> DurableQueue:
    limits = QueueLimits(
        max_bytes=config.queue.max_bytes,
        max_age=float(config.queue.max_age),
        segment_bytes=min(MAX_SEGMENT_BYTES, config.queue.max_bytes // 8),
    )
    return DurableQueue(config.queue.directory, limits)


def endpoint_for(config: PushConfig) -> Endpoint:
    token = config.bearer_token or config.bearer_token_file
    authorization = Secret(f"Bearer {token.reveal()}", token.source) if token is not None else None
    https = config.url.startswith("https:")
    return Endpoint.from_url(
        config.url, float(config.timeout), push_ssl_context(config.tls) if https else None, config.tls.server_name, authorization
    )


def send_policy(config: PushConfig) -> SendPolicy:
    return SendPolicy(float(config.interval), config.batch_max_samples, float(config.min_backoff), float(config.max_backoff))


class PushCollector(Collector):
    """netmon_agent_push_*: read from the queue and the sender when scraped."""

    def __init__(self, pusher: Pusher) -> None:
        self._pusher = pusher

    def collect(self) -> Iterator[Family]:
        pusher = self._pusher
        queue, sender = pusher.queue, pusher.sender.stats
        yield _counter("samples_queued", "Samples appended to the push queue", queue.stats.appended_items)
        yield _counter("samples_sent", "Samples the receiver acknowledged with a 2xx", sender.sent_items)
        dropped = CounterMetricFamily(
            "netmon_agent_push_samples_dropped", "Samples given up without delivery, by reason", labels=["reason"]
        )
        for reason in DROP_REASONS:
            total = queue.stats.dropped_items.get(reason, 0) + sender.dropped_items.get(reason, 0)
            dropped.add_metric([reason], total + pusher.dropped_items.get(reason, 0))
        yield dropped
        requests = CounterMetricFamily("netmon_agent_push_requests", "Remote-write requests by outcome", labels=["result"])
        for result in REQUEST_RESULTS:
            requests.add_metric([result], sender.requests.get(result, 0))
        yield requests
        yield _counter(
            "queue_corrupt_records", "Places in the queue where a record failed its checksum and was skipped",
            queue.stats.corrupt_records,
        )
        yield _gauge("queue_bytes", "Bytes of the push queue's segment files on disk", queue.disk_bytes())
        yield _gauge("queue_pending_samples", "Samples in the push queue not yet acknowledged", queue.pending_items())
        oldest = queue.oldest_pending_time()
        yield _gauge(
            "oldest_unsent_age_seconds", "Age of the oldest sample not yet acknowledged (0 when none waits)",
            max(time.time() - oldest, 0.0) if oldest is not None else 0.0,
        )
        yield _gauge("last_success_timestamp_seconds", "When the receiver last acknowledged a request", sender.last_success)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"netmon_agent_push_{name}", help_text, value=value)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"netmon_agent_push_{name}", help_text, value=value)

