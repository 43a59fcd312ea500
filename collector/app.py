"""The running collector: inventory -> (push receiver, scrapers) -> series store -> /metrics, status page,
remote_write out; liveness checked every second."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from collector import exposition
from collector.config import CollectorConfig, load_collector_config
from collector.fleet import CONFIG_PREFIX, FetchLog, FleetCollector, serve_config
from collector.forward import ForwardCollector, Forwarder, split_by_samples
from collector.ingest import Receiver, TokenBucket
from collector.scrape import Scraper
from collector.selfmetrics import CollectorMetrics, ConnectionsCollector, InventoryCollector
from collector.status import render_status
from collector.store import OutOfBounds, SeriesStore
from collector.tls import server_ssl_context
from foundation import __version__
from foundation.config.base import ConfigError
from foundation.httprefusals import RefusalsCollector
from foundation.httpserver import PREFIX_ROUTE, HttpError, HttpServer, Request, Response, require_method
from foundation.remote_write import BlockSeries, compress, write_blocks

log = logging.getLogger(__name__)

EXPIRY_INTERVAL = 1.0
WRITE_PATH = "/api/v1/write"
REFUSAL_LOG_INTERVAL = 10.0  # one line per sender and reason this often: a flood of bad pushes must not flood the log
# the garbage collector's thresholds: a young collection per 5,000 new objects rather than 700, so a full one
# (the whole heap walked) comes every 500 k; first sight of 105 k series makes ~3 objects each that live on
# (docs/benchmarks.md: 6.5 -> 4.6 µs/sample in-process; steady 1.6 -> 1.3)
GC_THRESHOLDS = (5_000, 10, 10)
REFUSAL_LOG_SENDERS = 10_000  # (sender, reason) pairs remembered; unauthenticated senders are keyed by address
# the `reason` label of a push the HTTP server refused before the receiver saw it (413: the same as the decoder's)
SERVER_REFUSALS = {
    400: "bad_request", 405: "method_not_allowed", 411: "length_required", 413: "too_large", 431: "headers_too_large",
    500: "internal_error",
}


class RefusalLog:
    """Lets one refused push per sender and reason through to the log per interval and counts the others (the
    counters on /metrics still see every one): a client flooding bad pushes costs a line every few seconds."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL, clock=time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, str], list[float]] = {}  # (sender, reason) -> [line logged at, held back since]

    def admit(self, sender: str, reason: str) -> int | None:
        """None: stay silent; else log now, mentioning this many refusals held back since the previous line."""
        now = self._clock()
        window = self._windows.get((sender, reason))
        if window is not None and now - window[0] < self._interval:
            window[1] += 1
            return None
        if window is None and len(self._windows) >= REFUSAL_LOG_SENDERS:
            self._windows.clear()
        self._windows[(sender, reason)] = [now, 0]
        return int(window[1]) if window is not None else 0


class Collector:
    def __init__(self, config: CollectorConfig, listen: tuple[str, int] | None = None) -> None:
        self.config = config
        self._listen = listen or (config.listen_host, config.listen_port)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = CollectorMetrics(self.registry)
        self.store = SeriesStore(config.agents, config.external_labels)
        self.registry.register(InventoryCollector(lambda: self.config, self.store))
        self.forwarders: list[Forwarder] = []
        self.registry.register(ForwardCollector(self.forwarders))
        self.fetches = FetchLog()  # agents' config fetches: runtime state that outlives a reload
        self.registry.register(FleetCollector(lambda: self.config, self.fetches))
        self._routes: dict = {}
        self.receiver = Receiver(config, self.store, self._forward, TokenBucket(config.ingest.max_samples_per_second))
        self.scraper = Scraper(self.store, config.scrape_timeout, self._forward, self.metrics.received.labels("pull").inc)
        self._server: HttpServer | None = None
        self.registry.register(ConnectionsCollector(lambda: self._server.refused_connections if self._server else 0))
        self.registry.register(RefusalsCollector("netmon_collector", lambda: self._server))
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reload_task: asyncio.Task[bool] | None = None
        self._refusals = RefusalLog()
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        for out in self.config.remote_write:
            self.forwarders.append(await Forwarder.start(out))
        self._routes = {
            WRITE_PATH: self._handle_write, "/metrics": self._handle_metrics, "/": self._handle_status,
            "/-/healthy": self._handle_healthy, "/-/ready": self._handle_healthy,
            # every path under the prefix, known agent id or not: serve_config checks the credential first
            CONFIG_PREFIX + PREFIX_ROUTE: self._handle_agent_config,
        }
        ssl_context = server_ssl_context(self.config.tls) if self.config.tls is not None else None
        self._server = HttpServer(self._routes, self.config.ingest.max_body_bytes, ssl_context, on_error=self._on_server_error)
        self.address = await self._server.start(*self._listen)
        self.scraper.start()
        self._tasks.append(asyncio.create_task(self._expire_forever(), name="expire"))
        modes = [agent.mode for agent in self.config.agents]
        log.info(
            "netmon-collector %s listening on %s:%d%s: %d agencies, %d push and %d pull agents, %d remote_write out",
            __version__, *self.address, " (TLS)" if ssl_context else "", len(self.config.agencies),
            modes.count("push"), modes.count("pull"), len(self.forwarders),
        )

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        gc.set_threshold(*GC_THRESHOLDS)
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        log.info("collector stopping")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.scraper.stop()
        if self._server is not None:
            await self._server.close()
        for forwarder in self.forwarders:
            await forwarder.stop()

    def _reload_on_signal(self) -> None:
        self._reload_task = asyncio.create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read the config file (SIGHUP); keep running the old config if the new one is invalid."""
        async with self._reload_lock:
            try:
                # off the event loop: with templates for 1,000 agents a load (render, agent program check) takes over 1 s
                config = await asyncio.to_thread(load_collector_config, self.config.source)
            except ConfigError as exc:
                log.error("config reload failed, keeping the previous config: %s", exc)
                self.metrics.reload_ok.set(0)
                return False
            if (config.listen_host, config.listen_port, config.tls, config.ingest.max_body_bytes) != (
                self.config.listen_host, self.config.listen_port, self.config.tls, self.config.ingest.max_body_bytes
            ):
                log.warning("config reload: listen, tls_server_config and ingest.max_body_bytes take effect at the next start")
            await self.scraper.stop()
            self._follow_config(config)
            self.scraper.start()
            forwarding_ok = await self._follow_remote_write(config)
            self.metrics.reload_ok.set(1 if forwarding_ok else 0)
            if forwarding_ok:
                self.metrics.reload_time.set_to_current_time()
            log.info("config reloaded: %d agencies, %d agents, %d remote_write out", len(config.agencies), len(config.agents), len(self.forwarders))
            return forwarding_ok

    def _follow_config(self, config: CollectorConfig) -> None:
        """Everything the running collector derives from its config, rebuilt for a reloaded one (in one place,
        so that what a reload changes is what a start would have built)."""
        now = time.time()
        self.config = config
        ended = self.store.apply(config.agents, config.external_labels, now)
        if ended:
            log.info("config reload: %d series of removed or renamed agents ended (stale markers forwarded)", len(ended))
            self._forward(ended, now)  # to the remotes that had them, before those change
        self.receiver.follow(config)
        self.scraper = Scraper(self.store, config.scrape_timeout, self._forward, self.metrics.received.labels("pull").inc)

    async def _follow_remote_write(self, config: CollectorConfig) -> bool:
        """Stop the remote_write outs the config no longer has, start its new ones (their queues stay on disk)."""
        kept = [forwarder for forwarder in self.forwarders if forwarder.config in config.remote_write]
        for forwarder in self.forwarders:
            if forwarder not in kept:
                await forwarder.stop()
        ok = True
        for out in config.remote_write:
            if all(forwarder.config != out for forwarder in kept):
                try:
                    kept.append(await Forwarder.start(out))
                except OSError as exc:
                    log.error("config reload: remote_write out to %s is off, its queue cannot be opened: %s", out.url, exc)
                    ok = False
        self.forwarders[:] = kept  # the list ForwardCollector reads
        return ok

    def _forward(self, series: list[BlockSeries], now: float) -> None:
        if not self.forwarders:
            return
        for part in split_by_samples(series, min(forwarder.config.batch_max_samples for forwarder in self.forwarders)):
            payload = compress(write_blocks(part))
            items = sum(len(samples) for _, samples in part)
            for forwarder in self.forwarders:
                forwarder.append(payload, items, int(now * 1000))

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            now = time.time()
            ended = self.store.expire(now)
            if ended:
                log.info("%d series of silent agents ended (stale markers forwarded)", len(ended))
                self._forward(ended, now)

    async def _handle_write(self, request: Request) -> Response:
        require_method(request, "POST")
        started = time.perf_counter()
        outcome = self.receiver.write(request.headers.get("authorization"), request.headers.get("content-encoding"), request.body)
        self.metrics.requests.labels(str(outcome.status), outcome.reason).inc()
        if outcome.status == 204:
            self.metrics.received.labels("push").inc(outcome.samples)
            self.metrics.ingest_seconds.observe(time.perf_counter() - started)
            if outcome.out_of_bounds is not None:
                self._log_out_of_bounds(outcome.agent.id if outcome.agent else "?", outcome.out_of_bounds)
            return Response(204)
        self.metrics.rejected.labels(outcome.reason).inc(outcome.samples)
        self._log_push_refusal(outcome.agent.id if outcome.agent else None, request.peer, outcome.status, outcome.reason, outcome.message)
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.status == 429 else {}
        if outcome.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="netmon-collector"'
        return Response(outcome.status, f"{outcome.reason}: {outcome.message}\n".encode(), headers=headers)

    def _on_server_error(self, request: Request | None, peer: str, error: HttpError) -> None:
        """A reply the HTTP server gave itself: to a push, counted and logged like the receiver's own refusals (a
        413 for a body over max_body_bytes is answered before the body is read, so before the receiver sees it)."""
        if request is None or request.path != WRITE_PATH:
            return
        reason = SERVER_REFUSALS.get(error.status, "bad_request")
        self.metrics.requests.labels(str(error.status), reason).inc()
        agent = self.receiver.authenticate(request.headers.get("authorization"))
        self._log_push_refusal(agent.id if agent else None, peer, error.status, reason, error.reason)

    def _log_out_of_bounds(self, agent_id: str, dropped: OutOfBounds) -> None:
        held_back = self._refusals.admit(agent_id, "timestamp_out_of_bounds")
        if held_back is not None:
            log.warning(
                "push from %s: samples dropped for their timestamps, %d older than ingest.max_sample_age and %d ahead of "
                "the collector's clock by more than ingest.max_sample_in_future, e.g. %s; is the agent's clock right?%s",
                agent_id, dropped.too_old, dropped.too_new, dropped.example,
                f" ({held_back} more such pushes since the last line)" if held_back else "",
            )

    def _log_push_refusal(self, agent_id: str | None, peer: str, status: int, reason: str, message: str) -> None:
        who = agent_id or f"unauthenticated peer {peer.rpartition(':')[0]}"
        held_back = self._refusals.admit(who, reason)
        if held_back is not None:
            (log.debug if status == 429 else log.warning)(
                "push from %s refused (%d %s): %s%s", who, status, reason, message,
                f" ({held_back} more such refusals since the last line)" if held_back else "",
            )

    async def _handle_metrics(self, request: Request) -> Response:
        require_method(request, "GET")
        body = exposition.page(generate_latest(self.registry).decode("utf-8"), self.store.render_groups(time.time())).encode("utf-8")
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def _handle_status(self, request: Request) -> Response:
        require_method(request, "GET")
        page = render_status(self.config, self.store, fetches=self.fetches, language=request.arg("lang"))
        return Response(200, page.encode("utf-8"), "text/html; charset=utf-8")

    async def _handle_agent_config(self, request: Request) -> Response:
        require_method(request, "GET")
        response = serve_config(self.config.fleet, self.fetches, request)
        if response.status in (401, 403, 404):
            self._log_config_refusal(request, response.status)
        return response

    def _log_config_refusal(self, request: Request, status: int) -> None:
        """Rate-limited like refused pushes: any path under the prefix reaches here, so a scan must not flood the log."""
        address = request.peer.rpartition(":")[0]
        held_back = self._refusals.admit(f"config fetch from {address}", str(status))
        if held_back is not None:
            log.warning(
                "config fetch %r from %s refused (%d)%s", request.path, request.peer, status,
                f" ({held_back} more such refusals since the last line)" if held_back else "",
            )

    async def _handle_healthy(self, request: Request) -> Response:
        return Response.text(200, "Healthy\n")
