"""Load generator for the collector: K emulated agents x S series every I seconds, pushing remote_write 1.0, plus
optional bad actors (connection floods, oversized bodies, slowloris, garbage bodies).

    python -m tests.field.loadgen --write-inventory inventory.yml --agents 1000 --tokens-dir D   # once
    python -m tests.field.loadgen --collector http://HOST:9856 --agents 1000 --series 500 --interval 15 \\
        --duration 600 --tokens-dir D [--ramp 60] [--processes 2] [--collector-pid PID] [--json summary.json]
        [--flood N] [--oversized N] [--slowloris N] [--garbage N --garbage-token-file F]

Each emulated agent has its own token (from the generated inventory), its own kept-alive connection and a random
phase (its first push falls within the first `--ramp` seconds, by default one interval); it pushes one sample per
series per interval, stamped with the real time: probe_* names with `target` and `module` labels, counters
increasing, gauges moving. Every push's latency and status are recorded; nothing is retried (a push that is not
204 is a reject, counted; status 0: no reply within `--timeout`). Latency is also reported for the steady state
(pushes after every agent's first). Agents are split across `--processes` worker processes so the generator itself
can use more than one core; the bad actors run in one more. `--collector-pid` samples the collector's RSS and CPU
from /proc while the load runs. The summary is one JSON object (stdout, and `--json PATH`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import struct
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from foundation.config.types import Secret
from foundation.httpclient import Endpoint, HttpClient, ProtocolError
from foundation.remote_write import HEADERS, STALE_NAN, Encoder, Labels, Series, compress, encode, make_series

WRITE_PATH = "/api/v1/write"
AGENTS_PER_AGENCY = 5
DISTRICTS = ("tp-my-tho", "cai-be", "cai-lay", "chau-thanh", "cho-gao", "go-cong-tay", "go-cong-dong", "tan-phuoc")
LEVELS = ("department", "district", "commune", "commune")
SERIES_PER_TARGET = 10
# (metric name, whether it is a counter) per module; each target gets one module's block of series
MODULE_SERIES: dict[str, tuple[tuple[str, bool], ...]] = {
    "icmp": (
        ("probe_success", False), ("probe_duration_seconds", False), ("probe_icmp_rtt_min_seconds", False),
        ("probe_icmp_rtt_avg_seconds", False), ("probe_icmp_rtt_max_seconds", False),
        ("probe_icmp_packet_loss_ratio", False), ("probe_icmp_packets_received_total", True),
        ("probe_icmp_reply_hop_limit", False), ("probe_ip_protocol", False), ("probe_ip_addr_hash", False),
    ),
    "tcp_connect": (
        ("probe_success", False), ("probe_duration_seconds", False), ("probe_tcp_connect_duration_seconds", False),
        ("probe_tcp_port_open", False), ("probe_tcp_tls_handshake_duration_seconds", False),
        ("probe_ssl_earliest_cert_expiry", False), ("probe_ip_protocol", False), ("probe_ip_addr_hash", False),
        ("probe_tls_version_info", False), ("probe_failed_due_to_regex", False),
    ),
    "http_2xx": (
        ("probe_success", False), ("probe_duration_seconds", False), ("probe_http_status_code", False),
        ("probe_http_content_length", False), ("probe_http_uncompressed_body_length", False),
        ("probe_http_redirects", False), ("probe_http_ssl", False), ("probe_http_version", False),
        ("probe_ssl_earliest_cert_expiry", False), ("probe_ip_addr_hash", False),
    ),
    "dns": (
        ("probe_success", False), ("probe_duration_seconds", False), ("probe_dns_lookup_time_seconds", False),
        ("probe_dns_duration_seconds", False), ("probe_dns_answer_rrs", False), ("probe_dns_authority_rrs", False),
        ("probe_dns_additional_rrs", False), ("probe_dns_rcode", False), ("probe_dns_query_succeeded", False),
        ("probe_dns_serial", False),
    ),
}
COUNTER_STEP = 5.0  # packets per probe run

SLOWLORIS_TRICKLE_SECONDS = 1.0  # one more header byte this often, forever
OVERSIZED_ANNOUNCED_BYTES = 1 << 30
FLOOD_BODY_SERIES = 50
ABUSE_REPLY_TIMEOUT = 10.0


# --- inventory ---------------------------------------------------------------------------------------------------


def agent_id(index: int) -> str:
    return f"lg-{index:04d}"


def agency_id(index: int) -> str:
    return f"ag-{index // AGENTS_PER_AGENCY:04d}"


def write_inventory(tokens_dir: Path, agents: int) -> str:
    """Make one token file per agent (`<agent id>.token`, mode 0600) and return the collector inventory YAML that
    binds each token to its agent (`agencies:` and `agents:`; five agents per agency)."""
    tokens_dir.mkdir(parents=True, exist_ok=True)
    agencies = ["agencies:"]
    inventory_agents = ["agents:"]
    for index in range(agents):
        if index % AGENTS_PER_AGENCY == 0:
            number = index // AGENTS_PER_AGENCY
            district, level = DISTRICTS[number % len(DISTRICTS)], LEVELS[number % len(LEVELS)]
            agencies.append(f"  - {{id: {agency_id(index)}, name: 'Cơ quan thử tải {number}', district: {district}, level: {level}}}")
        token_file = tokens_dir / f"{agent_id(index)}.token"
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        inventory_agents.append(
            f"  - {{id: {agent_id(index)}, agency: {agency_id(index)}, mode: push, bearer_token_file: '{token_file}'}}"
        )
    return "\n".join(agencies + inventory_agents) + "\n"


def read_tokens(tokens_dir: Path, agents: int) -> list[tuple[str, str]]:
    """(agent id, token) of the first `agents` token files, by agent id."""
    files = sorted(tokens_dir.glob("*.token"))
    if len(files) < agents:
        raise SystemExit(f"loadgen: {tokens_dir} holds {len(files)} token files, {agents} agents asked for")
    return [(file.stem, file.read_text(encoding="utf-8").strip()) for file in files[:agents]]


# --- emulated agents ---------------------------------------------------------------------------------------------


class EmulatedAgent:
    """One agent's series: label sets built once, counters running, gauges moving around a per-series level."""

    def __init__(self, label_sets: list[tuple[Labels, bool]], seed: int) -> None:
        self._random = random.Random(seed)
        self._label_sets = label_sets
        self._is_counter = [counter for _, counter in self._label_sets]
        self._values = [0.0 if counter else self._random.uniform(0.001, 1.0) for counter in self._is_counter]

    def next_series(self, timestamp_ms: int) -> list[Series]:
        jitter = self._random.random
        out = []
        for index, (labels, counter) in enumerate(self._label_sets):
            if counter:
                self._values[index] += COUNTER_STEP
                value = self._values[index]
            else:
                value = self._values[index] * (0.9 + 0.2 * jitter())
            out.append(Series(labels, ((timestamp_ms, value),)))
        return out


def series_labels(count: int, extra: dict[str, str]) -> list[tuple[Labels, bool]]:
    """`count` label sets (sorted, with __name__) and whether each is a counter: targets of cycling modules."""
    modules = list(MODULE_SERIES)
    out = []
    for index in range(count):
        target, slot = divmod(index, SERIES_PER_TARGET)
        module = modules[target % len(modules)]
        name, counter = MODULE_SERIES[module][slot]
        labels = {**extra, "target": f"target-{target:03d}", "module": module}
        out.append((make_series(name, labels, ()).labels, counter))
    return out


@dataclass
class PushStats:
    """What the pushes of one worker met."""

    pushes: int = 0
    samples_sent: int = 0
    samples_accepted: int = 0
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> pushes (0: no reply)
    errors: Counter = field(default_factory=Counter)  # exception class -> pushes without a reply
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds from request to reply)
    lateness: list[float] = field(default_factory=list)  # seconds a push started after its slot
    first_push: float = math.inf
    last_reply: float = 0.0

    def record(self, started: float, latency: float, late: float, samples: int, status: int) -> None:
        self.pushes += 1
        self.samples_sent += samples
        self.samples_accepted += samples if status == 204 else 0
        self.statuses[status] += 1
        self.latencies.append((started, latency))
        self.lateness.append(late)
        self.first_push = min(self.first_push, started)
        self.last_reply = max(self.last_reply, started + latency)


@dataclass(frozen=True)
class WorkerPlan:
    collector: str
    agents: list[tuple[int, str, str]]  # (global index, agent id, token)
    series: int
    interval: float
    duration: float
    start_at: float  # unix time at which every worker's first interval begins
    ramp: float  # agents' first pushes are spread over this many seconds from start_at
    timeout: float
    labels: dict[str, str]
    seed: int


def run_worker(plan: WorkerPlan) -> dict[str, Any]:
    """Entry point of a worker process: run its agents until the duration ends; the stats as plain data."""
    stats = asyncio.run(_run_agents(plan))
    return {
        "pushes": stats.pushes, "samples_sent": stats.samples_sent, "samples_accepted": stats.samples_accepted,
        "statuses": dict(stats.statuses), "errors": dict(stats.errors), "latencies": stats.latencies,
        "lateness": stats.lateness, "first_push": stats.first_push, "last_reply": stats.last_reply,
    }


async def _run_agents(plan: WorkerPlan) -> PushStats:
    # every agent sends the same label sets (the collector adds who sent them): built and encoded once, before
    # the clock starts, so that the generator's own first-sight cost does not delay the first pushes
    label_sets = series_labels(plan.series, plan.labels)
    encoder = Encoder(cache_size=plan.series + 1)
    encoder.encode([Series(labels, ((0, 0.0),)) for labels, _ in label_sets])
    stats = PushStats()
    await asyncio.gather(*(_run_agent(plan, index, token, label_sets, encoder, stats) for index, _, token in plan.agents))
    return stats


async def _run_agent(
    plan: WorkerPlan, index: int, token: str, label_sets: list[tuple[Labels, bool]], encoder: Encoder, stats: PushStats
) -> None:
    rng = random.Random(plan.seed * 1_000_003 + index)
    agent = EmulatedAgent(label_sets, rng.getrandbits(32))
    phase = rng.uniform(0, plan.ramp)
    endpoint = Endpoint.from_url(plan.collector.rstrip("/") + WRITE_PATH, plan.timeout, authorization=Secret(f"Bearer {token}", "loadgen"))
    client = HttpClient(endpoint)
    end = plan.start_at + plan.duration
    try:
        for slot in range(math.ceil(plan.duration / plan.interval) + 1):
            due = plan.start_at + phase + slot * plan.interval
            if due >= end:
                return
            await asyncio.sleep(max(due - time.time(), 0))
            started = time.time()
            series = agent.next_series(int(started * 1000))
            body = encoder.encode(series)
            status, latency = await _push(client, body, stats)
            stats.record(started, latency, started - due, len(series), status)
    finally:
        client.close()


async def _push(client: HttpClient, body: bytes, stats: PushStats) -> tuple[int, float]:
    began = time.perf_counter()
    try:
        reply = await client.post(body, HEADERS)
    except (OSError, TimeoutError, ProtocolError) as exc:
        stats.errors[type(exc).__name__] += 1
        return 0, time.perf_counter() - began
    return reply.status, time.perf_counter() - began


# --- bad actors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbusePlan:
    collector: str
    duration: float
    start_at: float
    flood: int  # connections posting back to back with unknown tokens, a new connection per request
    oversized: int  # connections announcing a body of OVERSIZED_ANNOUNCED_BYTES
    slowloris: int  # connections trickling an endless header section
    garbage: int  # connections posting invalid bodies with a valid token
    garbage_token: str | None
    source: str | None  # local address of the flood, oversized and slowloris connections (None: any)


def run_abuse(plan: AbusePlan) -> dict[str, Any]:
    """Entry point of the bad actors' process: replies per kind of abuse, as plain data."""
    return asyncio.run(_run_abuse(plan))


async def _run_abuse(plan: AbusePlan) -> dict[str, Any]:
    host, port = _host_port(plan.collector)
    server = Server(host, port, plan.source)
    end = plan.start_at + plan.duration
    await asyncio.sleep(max(plan.start_at - time.time(), 0))
    kinds = {
        "flood": (plan.flood, lambda: _flood(server, end)),
        "oversized": (plan.oversized, lambda: _oversized(server, end)),
        "slowloris": (plan.slowloris, lambda: _slowloris(server, end)),
        "garbage": (plan.garbage, lambda: _garbage(host, port, end, plan.garbage_token or "")),
    }
    results: dict[str, Any] = {}
    for kind, (connections, start) in kinds.items():
        if connections:
            results[kind] = asyncio.gather(*(start() for _ in range(connections)))
    return {kind: _merge_abuse(await outcome) for kind, outcome in results.items()}


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    source: str | None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, local_addr=(self.source, 0) if self.source else None)


def _host_port(url: str) -> tuple[str, int]:
    endpoint = Endpoint.from_url(url, 1.0)
    return endpoint.host, endpoint.port


def _merge_abuse(outcomes: list[Counter]) -> dict[str, int]:
    total: Counter = Counter()
    for outcome in outcomes:
        total.update(outcome)
    return dict(total)


def _request_head(port: int, length: int, token: str) -> bytes:
    lines = [f"POST {WRITE_PATH} HTTP/1.1", f"Host: collector:{port}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in HEADERS] + [f"Authorization: Bearer {token}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _status_of(reader: asyncio.StreamReader) -> str:
    """The reply's status code as text, after reading the head and a Content-Length body."""
    async with asyncio.timeout(ABUSE_REPLY_TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
    return lines[0].split(" ")[1]


async def _one_exchange(server: Server, data: bytes) -> str:
    """Send data on a new connection; the reply's status, or the error that ended the exchange."""
    writer = None
    try:
        async with asyncio.timeout(ABUSE_REPLY_TIMEOUT):
            reader, writer = await server.connect()
        writer.write(data)
        await writer.drain()
        return await _status_of(reader)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        if writer is not None:
            writer.transport.abort()


async def _flood(server: Server, end: float) -> Counter:
    body = encode([make_series("probe_success", {"target": f"t{n}", "module": "icmp"}, ((int(time.time() * 1000), 1.0),)) for n in range(FLOOD_BODY_SERIES)])
    outcome: Counter = Counter()
    while time.time() < end:
        outcome[await _one_exchange(server, _request_head(server.port, len(body), secrets.token_urlsafe(16)) + body)] += 1
    return outcome


async def _oversized(server: Server, end: float) -> Counter:
    head = _request_head(server.port, OVERSIZED_ANNOUNCED_BYTES, secrets.token_urlsafe(16))
    outcome: Counter = Counter()
    while time.time() < end:
        outcome[await _one_exchange(server, head + os.urandom(64 << 10))] += 1
    return outcome


async def _slowloris(server: Server, end: float) -> Counter:
    """Keep a connection in its header section one byte a second; when the server ends it, count how long it held
    (whole seconds, as `held_<n>s`; errors by name as well) and start again (a second later if it held 0 s)."""
    outcome: Counter = Counter()
    while time.time() < end:
        opened = time.time()
        try:
            await _hold_open(server, end)
        except OSError as exc:
            outcome[type(exc).__name__] += 1
        if time.time() < end:
            held = int(time.time() - opened)
            outcome[f"held_{held}s"] += 1
            if held == 0:
                await asyncio.sleep(SLOWLORIS_TRICKLE_SECONDS)
    return outcome


async def _hold_open(server: Server, end: float) -> None:
    """One slowloris connection, until the server ends it or `end`."""
    reader, writer = await server.connect()
    try:
        writer.write(f"POST {WRITE_PATH} HTTP/1.1\r\nHost: collector:{server.port}\r\nX-Slow: ".encode())
        while time.time() < end and not await _closed_within(reader, SLOWLORIS_TRICKLE_SECONDS):
            writer.write(b"a")
            await writer.drain()
    finally:
        writer.transport.abort()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server ended the connection (or answered) within `seconds`."""
    try:
        return bool(await asyncio.wait_for(reader.read(1), seconds)) or reader.at_eof()
    except TimeoutError:
        return False


def garbage_bodies() -> list[bytes]:
    """Bodies a broken or hostile agent might send: not snappy, snappy of junk, a bomb's header, bad series."""
    now_ms = int(time.time() * 1000)
    announced_huge = _varint(1 << 31) + b"\x00" * 64
    unsorted = compress(_write_request_raw([("target", "x"), ("__name__", "probe_success")], 1.0, now_ms))
    return [
        os.urandom(2048),
        compress(os.urandom(2048)),
        announced_huge,
        unsorted,
        compress(_write_request_raw([("__name__", "probe success")], 1.0, now_ms)),  # invalid metric name
        encode([make_series("netmon_agent_up", {"target": "x"}, ((now_ms, 1.0),))]),
        encode([make_series("probe_success", {"target": "x"}, ((now_ms, STALE_NAN),))])[:-3],  # cut short
    ]


def _varint(number: int) -> bytes:
    """Base-128 varint: protobuf's integers and the length header of a snappy block."""
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _write_request_raw(labels: list[tuple[str, str]], value: float, timestamp_ms: int) -> bytes:
    """A WriteRequest with labels in the given order (the Encoder would sort them)."""
    def field_bytes(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2]) + _varint(len(payload)) + payload

    label_bytes = b"".join(field_bytes(1, field_bytes(1, n.encode()) + field_bytes(2, v.encode())) for n, v in labels)
    sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(timestamp_ms)
    return field_bytes(1, label_bytes + field_bytes(2, sample))


async def _garbage(host: str, port: int, end: float, token: str) -> Counter:
    bodies = garbage_bodies()
    outcome: Counter = Counter()
    endpoint = Endpoint.from_url(f"http://{host}:{port}{WRITE_PATH}", ABUSE_REPLY_TIMEOUT, authorization=Secret(f"Bearer {token}", "loadgen"))
    client = HttpClient(endpoint)
    try:
        while time.time() < end:
            for body in bodies:
                try:
                    outcome[str((await client.post(body, HEADERS)).status)] += 1
                except (OSError, TimeoutError, ProtocolError) as exc:
                    outcome[type(exc).__name__] += 1
    finally:
        client.close()
    return outcome


# --- the collector's footprint -----------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


async def watch_process(pid: int, stop: asyncio.Event, steady_from: float, every: float = 1.0) -> dict[str, float]:
    """RSS (peak and last) and CPU of pid while the load runs, sampled from /proc every `every` seconds; CPU also
    from `steady_from` (unix time) on."""
    cpu_start, wall_start = process_cpu_seconds(pid), time.time()
    cpu_steady, wall_steady = None, None
    rss_samples = [process_rss_bytes(pid)]
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
        rss_samples.append(process_rss_bytes(pid))
        if cpu_steady is None and time.time() >= steady_from:
            cpu_steady, wall_steady = process_cpu_seconds(pid), time.time()
    cpu_end, wall_end = process_cpu_seconds(pid), time.time()
    steady_cores = (cpu_end - cpu_steady) / (wall_end - wall_steady) if cpu_steady is not None and wall_end > wall_steady else 0.0
    return {
        "pid": pid, "rss_bytes_start": rss_samples[0], "rss_bytes_max": max(rss_samples), "rss_bytes_end": rss_samples[-1],
        "cpu_seconds": round(cpu_end - cpu_start, 2), "cpu_cores_avg": round((cpu_end - cpu_start) / (wall_end - wall_start), 3),
        "steady_cpu_cores_avg": round(steady_cores, 3),
    }


# --- the run -----------------------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(max(math.ceil(share * len(ordered)) - 1, 0), len(ordered) - 1)]


def latency_figures(latencies: list[float]) -> dict[str, float]:
    return {name: round(percentile(latencies, share), 4) for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}


def summarize_pushes(results: list[dict[str, Any]], args: argparse.Namespace, steady_from: float) -> dict[str, Any]:
    timed = [(started, latency) for result in results for started, latency in result["latencies"]]
    lateness = [value for result in results for value in result["lateness"]]
    statuses: Counter = Counter()
    errors: Counter = Counter()
    for result in results:
        statuses.update({int(code): count for code, count in result["statuses"].items()})
        errors.update(result["errors"])
    accepted = sum(result["samples_accepted"] for result in results)
    first = min((result["first_push"] for result in results), default=0.0)
    last = max((result["last_reply"] for result in results), default=0.0)
    span = last - first if last > first else 0.0
    return {
        "agents": args.agents, "series": args.series, "interval_seconds": args.interval,
        "duration_seconds": args.duration, "ramp_seconds": args.ramp, "processes": args.processes,
        "pushes": sum(result["pushes"] for result in results),
        "samples_sent": sum(result["samples_sent"] for result in results), "samples_accepted": accepted,
        "rejected_pushes": sum(count for code, count in statuses.items() if code != 204),
        "statuses": {str(code): count for code, count in sorted(statuses.items())}, "errors": dict(errors),
        "samples_per_second": round(accepted / span, 1) if span else 0.0,
        "latency_seconds": latency_figures([latency for _, latency in timed]),
        # once every agent has pushed twice: the collector has seen every series (first sight costs ~6x more)
        "steady_latency_seconds": latency_figures([latency for started, latency in timed if started >= steady_from]),
        "steady_pushes": sum(1 for started, _ in timed if started >= steady_from),
        "lateness_seconds": {"p99": round(percentile(lateness, 0.99), 4), "max": round(percentile(lateness, 1.0), 4)},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens = read_tokens(args.tokens_dir, args.agents) if args.agents else []
    start_at = time.time() + args.start_delay
    steady_from = start_at + args.ramp + args.interval
    labels = dict(label.split("=", 1) for label in args.label)
    plans = [
        WorkerPlan(args.collector, [(i, *tokens[i]) for i in range(worker, len(tokens), args.processes)], args.series,
                   args.interval, args.duration, start_at, args.ramp, args.timeout, labels, args.seed)
        for worker in range(args.processes)
    ]
    abuse = AbusePlan(
        args.collector, args.duration, start_at, args.flood, args.oversized, args.slowloris, args.garbage,
        args.garbage_token_file.read_text(encoding="utf-8").strip() if args.garbage_token_file else None, args.abuse_source,
    )
    any_abuse = args.flood or args.oversized or args.slowloris or args.garbage
    loop = asyncio.get_running_loop()
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch_process(args.collector_pid, stop_watch, steady_from)) if args.collector_pid else None
    with ProcessPoolExecutor(len(plans) + 1, mp_context=get_context("spawn")) as pool:
        workers = [loop.run_in_executor(pool, run_worker, plan) for plan in plans if plan.agents]
        abusers = loop.run_in_executor(pool, run_abuse, abuse) if any_abuse else None
        results = await asyncio.gather(*workers)
        abuse_results = await abusers if abusers is not None else {}
    stop_watch.set()
    summary: dict[str, Any] = {"pushes": summarize_pushes(results, args, steady_from), "abuse": abuse_results}
    if watcher is not None:
        summary["collector"] = await watcher
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.field.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collector", help="collector base URL, e.g. http://10.100.0.2:9856")
    parser.add_argument("--agents", type=int, default=1000, help="emulated agents (each needs a token file)")
    parser.add_argument("--series", type=int, default=500, help="series per agent")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between an agent's pushes")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--tokens-dir", type=Path, required=True, help="<agent id>.token files (see --write-inventory)")
    parser.add_argument("--write-inventory", type=Path, metavar="PATH", help="write --agents tokens and the collector inventory YAML to PATH, then exit")
    parser.add_argument("--ramp", type=float, help="seconds over which the agents' first pushes are spread (default: the interval)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes the agents are spread over")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per push")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=VALUE", help="extra label on every series (repeatable)")
    parser.add_argument("--seed", type=int, default=1, help="phases and values are reproducible per seed")
    parser.add_argument("--start-delay", type=float, default=1.0, help="seconds before the first interval (workers start meanwhile)")
    parser.add_argument("--collector-pid", type=int, help="record this process's RSS and CPU from /proc during the run")
    parser.add_argument("--flood", type=int, default=0, help="connections flooding with unknown tokens")
    parser.add_argument("--oversized", type=int, default=0, help="connections announcing 1 GiB bodies")
    parser.add_argument("--slowloris", type=int, default=0, help="connections trickling an endless header section")
    parser.add_argument("--garbage", type=int, default=0, help="connections posting invalid bodies (needs --garbage-token-file)")
    parser.add_argument("--garbage-token-file", type=Path, help="a valid agent token for --garbage")
    parser.add_argument("--abuse-source", metavar="IP", help="local address of the flood, oversized and slowloris connections")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.write_inventory:
        args.write_inventory.write_text(write_inventory(args.tokens_dir, args.agents), encoding="utf-8")
        return 0
    args.ramp = args.interval if args.ramp is None else args.ramp
    if not args.collector:
        raise SystemExit("loadgen: --collector URL is required")
    if args.garbage and not args.garbage_token_file:
        raise SystemExit("loadgen: --garbage needs --garbage-token-file")
    summary = asyncio.run(run(args))
    text = json.dumps(summary, indent=1)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
