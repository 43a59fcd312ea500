"""The running collector: inventory -> (push receiver, scrapers) -> series store -> /metrics, status page,
remote_write out; liveness checked every second."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agents import __version__
from agents.httpserver import HttpServer, Request, Response, require_method
from agents.remote_write import Encoder, Series
from collector.config import CollectorConfig
from collector.forward import ForwardCollector, Forwarder
from collector.ingest import LABEL_CACHE_PER_AGENT, Receiver, TokenBucket
from collector.scrape import Scraper
from collector.selfmetrics import CollectorMetrics, InventoryCollector
from collector.status import render_status
from collector.store import SeriesStore
from collector.tls import server_ssl_context

log = logging.getLogger(__name__)

EXPIRY_INTERVAL = 1.0
WRITE_PATH = "/api/v1/write"


class Collector:
    def __init__(self, config: CollectorConfig, listen: tuple[str, int] | None = None) -> None:
        self.config = config
        self._listen = listen or (config.listen_host, config.listen_port)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = CollectorMetrics(self.registry)
        self.store = SeriesStore(config.agents, config.external_labels)
        self.registry.register(InventoryCollector(config, self.store))
        self.forwarders: list[Forwarder] = []
        self.registry.register(ForwardCollector(self.forwarders))
        self._encoder = Encoder(cache_size=LABEL_CACHE_PER_AGENT * max(len(config.agents), 1))
        self.receiver = Receiver(
            config, self.store, self._forward, TokenBucket(config.ingest.max_samples_per_second), bool(config.remote_write)
        )
        self.scraper = Scraper(self.store, config.scrape_timeout, self._forward, self.metrics.received.labels("pull").inc)
        self._server: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        for out in self.config.remote_write:
            self.forwarders.append(await Forwarder.start(out))
        routes = {
            WRITE_PATH: self._handle_write, "/metrics": self._handle_metrics, "/": self._handle_status,
            "/-/healthy": self._handle_healthy, "/-/ready": self._handle_healthy,
        }
        ssl_context = server_ssl_context(self.config.tls) if self.config.tls is not None else None
        self._server = HttpServer(routes, self.config.ingest.max_body_bytes, ssl_context)
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

    def _forward(self, series: list[Series], now: float) -> None:
        if not self.forwarders:
            return
        payload = self._encoder.encode(series)
        items = sum(len(samples) for _, samples in series)
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
            return Response(204)
        self.metrics.rejected.labels(outcome.reason).inc(outcome.samples)
        who = outcome.agent.id if outcome.agent else f"unauthenticated peer {request.peer}"
        (log.debug if outcome.status == 429 else log.warning)("push from %s refused (%d %s): %s", who, outcome.status, outcome.reason, outcome.message)
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.status == 429 else {}
        if outcome.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="netmon-collector"'
        return Response(outcome.status, f"{outcome.reason}: {outcome.message}\n".encode(), headers=headers)

    async def _handle_metrics(self, request: Request) -> Response:
        require_method(request, "GET")
        body = generate_latest(self.registry) + self.store.render(time.time()).encode("utf-8")
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def _handle_status(self, request: Request) -> Response:
        require_method(request, "GET")
        return Response(200, render_status(self.config, self.store).encode("utf-8"), "text/html; charset=utf-8")

    async def _handle_healthy(self, request: Request) -> Response:
        return Response.text(200, "Healthy\n")
