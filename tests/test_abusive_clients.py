"""Abusive clients against the agent's and the collector's HTTP server, each run as an operator runs it: 1,000
slowloris connections, 1,000 idle keep-alive connections, a 1 MB header block, a chunked body that never ends,
and (collector) a gzip bomb and oversized pushes. Throughout, a legitimate scrape (and push) from another
address is answered within 1 s, the server's memory stays within ATTACK_RSS_MB of what it was before, and every
connection the server closes early is counted in `*_http_refusals_total{reason}` (docs/fuzzing.md)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation import remote_write as rw
from foundation.httpserver import HEADER_TIMEOUT, HttpServer, Request, Response
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.test_agent_run import ROOT, agent_config, metric_value
from tests.test_collector import TOKEN_ENV, TOKENS, collector_argv, collector_config, probe_series

ATTACKERS = 1_000
ATTACK_RSS_MB = 40  # what 1,000 hostile connections may add to a server's memory (measured: docs/fuzzing.md)
LEGIT = ("127.0.0.2", 0)  # legitimate clients come from another address than the attacker (127.0.0.1)


@dataclass
class Server:
    kind: str  # agent or collector
    port: int
    pid: int

    def request(self, method: str = "GET", path: str = "/metrics", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """(status, body, seconds) of one request from the legitimate address."""
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5, source_address=LEGIT)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            reply = connection.getresponse()
            return reply.status, reply.read(), time.monotonic() - started
        finally:
            connection.close()

    def refusals(self, reason: str) -> float:
        status, text, _ = self.request()
        assert status == 200
        return metric_value(text.decode(), f"netmon_{self.kind}_http_refusals_total", reason=reason) or 0.0

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def push_body() -> bytes:
    return rw.encode([probe_series(1.0, target="legit")])


async def legitimate_traffic(server: Server, seconds: float) -> list[float]:
    """Scrapes (and, to the collector, pushes) every 0.25 s from the other address: each one's seconds."""
    durations = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, _, took = await asyncio.to_thread(server.request)
        assert status == 200
        durations.append(took)
        if server.kind == "collector":
            headers = {**dict(rw.HEADERS), "Authorization": f"Bearer {TOKENS['so-tttt-1']}"}
            status, text, took = await asyncio.to_thread(server.request, "POST", "/api/v1/write", push_body(), headers)
            assert status == 204, text
            durations.append(took)
        await asyncio.sleep(0.25)
    return durations


@contextmanager
def started(kind: str, directory: Path) -> Iterator[Server]:
    port = free_port()
    if kind == "agent":
        config = directory / "agent.yml"
        config.write_text(agent_config(port, free_port()), encoding="utf-8")
        argv, env = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)], {}
    else:
        argv, env = collector_argv(collector_config(directory, port)), TOKEN_ENV
    with running(argv, log_path=str(directory / "server.log"), env=env, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield Server(kind, port, proc.pid)


@pytest.fixture(scope="module", params=["agent", "collector"])
def server(request, tmp_path_factory) -> Iterator[Server]:
    with started(request.param, tmp_path_factory.mktemp(request.param)) as running_server:
        yield running_server


@pytest.fixture(scope="module")
def collector(tmp_path_factory) -> Iterator[Server]:
    """For what only the collector takes: pushes."""
    with started("collector", tmp_path_factory.mktemp("pushes")) as running_server:
        yield running_server


async def open_many(port: int, count: int, first_bytes: bytes) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """count connections from the attacker's address, each having sent first_bytes; opened in batches (the
    listen backlog is 100)."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    while len(opened) < count:
        batch = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in range(min(50, count - len(opened)))])
        for _, writer in batch:
            writer.write(first_bytes)
        opened += batch
    return opened


def close_all(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.transport.abort()


async def while_attacked(server: Server, attack: Callable[[], Awaitable[None]], seconds: float) -> tuple[list[float], float]:
    """Run the attack and legitimate traffic together: the legitimate requests' seconds and the peak RSS growth."""
    baseline = server.rss_mb()
    peak = baseline
    attack_task = asyncio.ensure_future(attack())
    legit_task = asyncio.ensure_future(legitimate_traffic(server, seconds))
    while not legit_task.done():
        peak = max(peak, server.rss_mb())
        await asyncio.sleep(0.2)
    durations = await legit_task
    await attack_task
    return durations, peak - baseline


async def test_1000_slowloris_connections_leave_scrapes_and_pushes_answered_and_are_all_counted(server):
    before = server.refusals("timeout")
    connections: list = []

    async def slowloris() -> None:
        connections.extend(await open_many(server.port, ATTACKERS, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"))
        for _ in range(int(HEADER_TIMEOUT / 2) + 2):  # a header byte every 2 s, past the server's deadline
            await asyncio.sleep(2)
            for reader, writer in connections:
                if not (writer.is_closing() or reader.at_eof()):
                    with contextlib.suppress(ConnectionError):
                        writer.write(b"X")

    try:
        durations, grown = await while_attacked(server, slowloris, HEADER_TIMEOUT + 3)
        assert max(durations) < 1.0, durations
        assert grown < ATTACK_RSS_MB
        closed = await asyncio.gather(*[asyncio.wait_for(reader.read(), 5) for reader, _ in connections])
        assert closed == [b""] * ATTACKERS  # the server hung up on every one, without an answer
    finally:
        close_all(connections)
    assert server.refusals("timeout") - before == ATTACKERS


async def test_1000_idle_keep_alive_connections_leave_scrapes_and_pushes_answered(server):
    connections: list = []

    async def idle_keep_alive() -> None:
        connections.extend(await open_many(server.port, ATTACKERS, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"))
        answers = await asyncio.gather(*[reader.readuntil(b"\r\n\r\n") for reader, _ in connections])
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)

    try:
        durations, grown = await while_attacked(server, idle_keep_alive, 4)
        assert max(durations) < 1.0, durations
        assert grown < ATTACK_RSS_MB
    finally:
        close_all(connections)


@pytest.mark.parametrize("block", [b"X-Big: " + b"a" * (1 << 20) + b"\r\n", b"X-Many: a\r\n" * ((1 << 20) // 11)])
async def test_a_1mb_header_block_is_refused_at_once_and_counted(server, block):
    before = server.refusals("too_large")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\n" + block + b"\r\n")
        answer = await asyncio.wait_for(reader.read(200), 1.0)
    finally:
        writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert server.refusals("too_large") - before == 1
    status, _, took = server.request()
    assert status == 200 and took < 1.0


async def test_a_chunked_body_that_never_ends_is_refused_at_once_and_counted(server):
    before = server.refusals("bad_request")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def endless_chunks() -> None:
        while not writer.is_closing():
            writer.write(b"4000\r\n" + b"z" * 0x4000 + b"\r\n")
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0.01)

    writer.write(b"POST /api/v1/write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    sender = asyncio.ensure_future(endless_chunks())
    try:
        answer = await asyncio.wait_for(reader.read(200), 1.0)
    finally:
        writer.transport.abort()
        await sender
    assert answer.startswith(b"HTTP/1.1 411"), answer
    assert server.refusals("bad_request") - before == 1


def test_a_gzip_bomb_pushed_to_the_collector_is_refused_without_inflating_it(collector):
    server = collector
    bomb = gzip.compress(b"\0" * (512 << 20), compresslevel=9)  # 512 MiB of zeros in ~0.5 MB
    headers = {**dict(rw.HEADERS), "Content-Encoding": "gzip", "Authorization": f"Bearer {TOKENS['so-tttt-1']}"}
    baseline = server.rss_mb()
    status, text, took = server.request("POST", "/api/v1/write", bomb, headers)
    assert status == 400 and b"send snappy" in text and took < 1.0
    assert server.rss_mb() - baseline < ATTACK_RSS_MB
    _, metrics, _ = server.request()
    assert metric_value(metrics.decode(), "netmon_collector_write_requests_total", code="400", reason="bad_encoding") >= 1


def test_a_snappy_bomb_and_an_oversized_body_are_refused_before_inflating_or_reading(collector):
    server = collector
    headers = {**dict(rw.HEADERS), "Authorization": f"Bearer {TOKENS['so-tttt-1']}"}
    snappy_bomb = bytes([0x80, 0x80, 0x80, 0x80, 0x04]) + b"\0" * 64  # the header announces 1 GiB
    status, text, took = server.request("POST", "/api/v1/write", snappy_bomb, headers)
    assert status == 413 and took < 1.0, text
    before = server.refusals("too_large")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5, source_address=LEGIT)
    try:  # announce 1 GiB, send nothing: refused on the announcement
        connection.putrequest("POST", "/api/v1/write")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert server.refusals("too_large") - before == 1


# --- the mechanisms, on a server with a small connection limit -------------------------------------


async def _ok(request: Request) -> Response:
    return Response.text(200, "ok")


async def test_when_full_the_longest_idle_keep_alive_connection_makes_room_for_a_new_client():
    server = HttpServer({"/": _ok}, max_connections=4)
    _, port = await server.start("127.0.0.1", 0)
    held = []
    try:
        for source in ("127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await reader.readuntil(b"ok")
            held.append((reader, writer))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
        writer.write(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 1.0)).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(held[0][0].read(), 1.0) == b""  # the oldest idle one was closed for it
        assert server.refusals["idle_reclaimed"] == 1 and server.refusals["connection_limit"] == 0
    finally:
        close_all(held)
        await server.close()


async def test_a_client_that_stops_reading_a_large_response_is_aborted_and_counted(monkeypatch):
    from foundation import httpserver

    monkeypatch.setattr(httpserver, "WRITE_TIMEOUT", 0.5)

    async def endless(request: Request) -> Response:
        return Response(200, (b"x" * 65536 for _ in range(10_000)))  # 640 MB, streamed

    server = HttpServer({"/": endless})
    _, port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # and never read
        deadline = time.monotonic() + 10
        while server.refusals["write_timeout"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert server.refusals["write_timeout"] == 1
        writer.transport.abort()
    finally:
        await server.close()
