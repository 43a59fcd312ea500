"""Pull: scrape each pull agent's /metrics on its interval, all concurrently, each within the scrape timeout.

Like Prometheus, every scrape adds `up`, `scrape_duration_seconds` and `scrape_samples_scraped` to the
agent's series. A scrape replaces the agent's series: those it no longer has end with a stale marker.
A failed scrape sets `up` 0 at once; the agent's other series stay until its TTL passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from collector.store import AgentState, Rejected, SeriesStore
from foundation import __version__
from foundation.httpclient import Endpoint, HttpClient, ProtocolError
from foundation.remote_write import LABEL_NAME, METRIC_NAME, BlockSeries, Series

log = logging.getLogger(__name__)

MAX_SCRAPE_BYTES = 32 << 20
USER_AGENT = f"netmon-collector/{__version__}"


class ScrapeError(Exception):
    pass


async def fetch_metrics(address: str, timeout: float) -> str:
    """GET http://address/metrics with `Connection: close`, plain text only, within the timeout."""
    client = HttpClient(Endpoint.from_url(f"http://{address}/metrics", timeout), USER_AGENT, keep_alive=False)
    try:
        reply = await client.get((("Accept", "text/plain"),), max_body=MAX_SCRAPE_BYTES)
    except ProtocolError as exc:
        raise ScrapeError(str(exc)) from exc
    if reply.status != 200:
        raise ScrapeError(f"unexpected reply {reply.status_line[:60]!r}")
    if "gzip" in reply.headers.get("content-encoding", "").lower():
        raise ScrapeError("gzip reply to a request that did not accept it")
    return reply.body.decode("utf-8")


def parse_exposition(text: str, timestamp_ms: int) -> list[Series]:
    """Text exposition -> series stamped with the scrape time (NaN and ±Inf kept, as Prometheus keeps them); samples
    with a metric or label name Prometheus would refuse are skipped. Raises ValueError, and only that, for text that
    is not the exposition format."""
    try:
        return _series_of(text, timestamp_ms)
    except (IndexError, KeyError, TypeError, AttributeError) as exc:  # prometheus_client's parser lets these out too
        raise ValueError(f"not the text exposition format ({type(exc).__name__}: {exc})") from None


def _series_of(text: str, timestamp_ms: int) -> list[Series]:
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if not METRIC_NAME.fullmatch(sample.name) or not _well_named(sample.labels):
                continue  # prometheus_client reads names Prometheus refuses: one such series would break /metrics
            labels = tuple(sorted({**sample.labels, "__name__": sample.name}.items()))
            out.append(Series(labels, ((timestamp_ms, value),)))
    return out


def _well_named(labels: dict[str, str]) -> bool:
    return all(LABEL_NAME.fullmatch(name) for name in labels)


def _scrape_series(name: str, value: float, timestamp_ms: int) -> Series:
    return Series((("__name__", name),), ((timestamp_ms, value),))


class Scraper:
    """One task per pull agent, each on its own interval."""

    def __init__(self, store: SeriesStore, timeout: float, forward: Callable[[list[BlockSeries], float], None], on_scrape: Callable[[int], None]) -> None:
        self.store = store
        self.timeout = timeout
        self.forward = forward
        self.on_scrape = on_scrape  # samples received, for the self-metrics
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for state in self.store.states.values():
            if state.agent.mode == "pull":
                self._tasks.append(asyncio.create_task(self._loop(state), name=f"scrape:{state.agent.id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, state: AgentState) -> None:
        interval = state.agent.interval
        while True:
            started = time.monotonic()
            try:
                await self.scrape(state)
            except Exception:  # noqa: BLE001 - one agent's bad reply must not end its scraping
                log.exception("scrape of %s failed unexpectedly", state.agent.id)
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.0))

    async def scrape(self, state: AgentState) -> None:
        address = state.agent.address
        assert address is not None
        started = time.time()
        timestamp_ms = int(started * 1000)
        timeout = min(self.timeout, state.agent.interval)
        try:
            text = await fetch_metrics(address, timeout)
            series = parse_exposition(text, timestamp_ms)
        except (OSError, TimeoutError, ScrapeError, ValueError) as exc:
            if state.scrape_ok:
                log.warning("scrape of agent %s at %s failed: %s", state.agent.id, address, exc or type(exc).__name__)
            state.scrape_ok = False
            if state.series:  # `up` turns 0 at once; the other series stay until the TTL passes
                self._record(state, [_scrape_series("up", 0.0, timestamp_ms)], time.time(), replace=False)
            return
        duration = time.time() - started
        if not state.scrape_ok:
            log.info("scrape of agent %s at %s succeeds again", state.agent.id, address)
        series += [
            _scrape_series("up", 1.0, timestamp_ms),
            _scrape_series("scrape_duration_seconds", duration, timestamp_ms),
            _scrape_series("scrape_samples_scraped", float(len(series)), timestamp_ms),
        ]
        state.scrape_ok = True
        self._record(state, series, time.time(), replace=True)

    def _record(self, state: AgentState, series: list[Series], now: float, replace: bool) -> None:
        last_seen = state.last_seen
        try:
            count, forward = (self.store.replace if replace else self.store.accept)(state, series, now)
        except Rejected as exc:
            log.warning("scrape of agent %s refused: %s", state.agent.id, exc)
            state.scrape_ok = False
            return
        if not replace:
            state.last_seen = last_seen  # a failed scrape is not a sign of life
        self.on_scrape(count)
        if forward:
            self.forward(forward, now)
