"""`<prefix>_http_refusals_total{reason}`: connections the HTTP server closed before serving them whole, for the
agent's and the collector's /metrics alike (reasons: foundation.httpserver.REFUSAL_REASONS)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from foundation.httpserver import REFUSAL_REASONS, HttpServer


class RefusalsCollector(Collector):
    def __init__(self, prefix: str, server: Callable[[], HttpServer | None]) -> None:
        self._prefix = prefix
        self._server = server

    def collect(self) -> Iterator[CounterMetricFamily]:
        server = self._server()
        family = CounterMetricFamily(
            f"{self._prefix}_http_refusals",
            "Connections the HTTP server closed before serving them whole, by reason: connection_limit (over the "
            "connection cap or one address's share), idle_reclaimed (idle keep-alive closed to make room), timeout "
            "(request not sent in time), write_timeout (response not read), bad_request, too_large",
            labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            family.add_metric([reason], server.refusals[reason] if server is not None else 0)
        yield family
