"""Cold restart: N push agents keep pushing while the collector is killed (SIGKILL) and started again, so every
series is seen for the first time at once. Per-agent backlog over time, status codes seen, time to steady state.

    cd /work/main && .venv/bin/python tests/bench/cold_restart.py [--agents 1000] [--series 500] [--warmup 45] [--after 120]

Each simulated agent is what the real agent's push does, in memory: every `--interval` its probes produce one
record (`--series` samples stamped now, encoded with foundation's remote_write encoder, label blocks made once
as the agent's Encoder keeps them); its sender sends what is
queued, up to `--batch-max-samples` per request (records joined as the real sender joins them), one request at a
time over a keep-alive connection with the agent's own bearer token, then lets samples gather for
`--push-interval`. 2xx acknowledges; 429 waits its Retry-After; 5xx and network errors back off as
foundation.sender does (capped exponential, jittered, `--min-backoff`..`--max-backoff`).

An agent's backlog is the age of its oldest unacknowledged record (0 when its queue is empty). The goal
(issue 16): no 5xx, and no agent's backlog over one probe interval for longer than 60 s at a time; steady state is
the first moment after the restart from which no agent's backlog exceeds one interval again.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from foundation.httpclient import Endpoint, HttpClient, ProtocolError  # noqa: E402
from foundation.remote_write import HEADERS, compress, join_bodies, label_block, write_blocks  # noqa: E402
from foundation.sender import SendPolicy, retry_after  # noqa: E402
from tests.bench.bench_collector import collector_config, process_cpu_seconds, rss_mib  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import stop, wait_for_port  # noqa: E402

GOAL_OVER_INTERVAL_SECONDS = 60.0  # an agent's backlog may exceed one interval this long at most
REQUEST_TIMEOUT = 10.0  # the agent's push.timeout default


@dataclass(slots=True)
class Record:
    created: float  # monotonic time its samples were produced
    samples: int
    body: bytes


@dataclass(slots=True)
class Agent:
    number: int
    token: str
    queue: collections.deque = field(default_factory=collections.deque)
    over_since: float | None = None  # monotonic time the backlog went over one interval (None: it is not)
    longest_over: float = 0.0  # after the restart (over stretches that began before it count whole)

    def backlog(self, now: float) -> float:
        return now - self.queue[0].created if self.queue else 0.0


@dataclass
class Options:
    agents: int = 1000
    series: int = 500
    interval: float = 15.0  # probe interval: one record per agent this often
    push_interval: float = 5.0  # push.interval: samples gather this long once the queue is drained
    batch_max_samples: int = 2000
    min_backoff: float = 1.0
    max_backoff: float = 60.0
    warmup: float = 45.0  # steady pushing before the kill
    outage: float = 0.0  # seconds between the kill and the restart
    after: float = 120.0  # run this long after the restart
    first_sight_share: float = 0.5  # the collector's ingest.first_sight_share (its default)


@dataclass
class Report:
    options: Options
    statuses: collections.Counter = field(default_factory=collections.Counter)  # after the restart, by code or "network"
    timeline: list[tuple[float, int, float, dict]] = field(default_factory=list)  # (s since restart, agents over, max backlog, statuses)
    longest_over: float = 0.0  # the longest an agent's backlog stayed over one interval (stretches touching the restart)
    steady_after: float | None = None  # seconds from the restart to steady state (None: not reached)
    restart_seconds: float = 0.0  # kill to listening again
    collector_cpu: float = 0.0  # the restarted collector's CPU seconds, start-up not included
    samples_after: int = 0  # acknowledged after the restart
    rss_mib: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if isinstance(status, int) and status >= 500)

    @property
    def refused(self) -> int:
        """4xx other than 429: pushes the collector will never take."""
        return sum(count for status, count in self.statuses.items() if isinstance(status, int) and 400 <= status < 500 and status != 429)


class Fleet:
    """The simulated agents, their counters, and the collector they push to."""

    def __init__(self, options: Options, url: str) -> None:
        self.options = options
        self.endpoint = Endpoint.from_url(url, timeout=REQUEST_TIMEOUT)
        self.agents = [Agent(a, f"bench-token-{a}") for a in range(options.agents)]
        self.policy = SendPolicy(options.push_interval, options.batch_max_samples, options.min_backoff, options.max_backoff)
        self.statuses: collections.Counter = collections.Counter()  # since the last sample of the timeline
        self.acked = 0
        self.restarted_at: float | None = None

    async def run_agent(self, agent: Agent) -> None:
        await asyncio.sleep(agent.number / self.options.agents * self.options.interval)  # agents' slots spread out
        await asyncio.gather(self._produce(agent), self._send(agent))

    async def _produce(self, agent: Agent) -> None:
        blocks = [  # each series' labels encoded once, as the agent's Encoder remembers them
            label_block((("__name__", f"probe_sim_metric_{n % 20}_seconds"), ("instance", f"agent-{agent.number}"), ("target", f"target-{n // 20}")))
            for n in range(self.options.series)
        ]
        while True:
            created = time.monotonic()
            stamp = int(time.time() * 1000)
            body = compress(write_blocks([(block, ((stamp, float(n)),)) for n, block in enumerate(blocks)]))
            agent.queue.append(Record(created, self.options.series, body))
            await asyncio.sleep(max(created + self.options.interval - time.monotonic(), 0))

    async def _send(self, agent: Agent) -> None:
        client = HttpClient(Endpoint.from_url(self.endpoint.url, REQUEST_TIMEOUT))
        headers = HEADERS + (("Authorization", f"Bearer {agent.token}"),)
        failures = 0
        while True:
            if not agent.queue:
                await asyncio.sleep(self.policy.interval)
                continue
            batch, samples = [], 0
            for record in agent.queue:
                if batch and samples + record.samples > self.policy.batch_max_samples:
                    break
                batch.append(record)
                samples += record.samples
            try:
                reply = await client.post(join_bodies([record.body for record in batch], 64 << 20), headers, max_body=512, truncate=True)
                status = reply.status
            except ConnectionRefusedError:
                status, reply = "refused", None  # nothing listening: the collector is down
            except TimeoutError:
                status, reply = "timeout", None  # no reply within the agent's push.timeout
            except (OSError, ProtocolError):
                status, reply = "network", None
            self.statuses[status] += 1
            if isinstance(status, int) and status < 500 and status != 429:  # answered for good (2xx, or a 4xx: dropped)
                for _ in batch:
                    agent.queue.popleft()
                self.acked += samples if 200 <= status < 300 else 0
                failures = 0
                continue
            failures += 1
            wait = retry_after(reply.headers.get("retry-after")) if status == 429 and reply is not None else None
            await asyncio.sleep(wait if wait is not None else self.policy.backoff(failures))

    def sample(self, now: float) -> tuple[int, float]:
        """Agents over one interval of backlog, and the largest backlog; keeps each agent's longest stretch over."""
        over, largest = 0, 0.0
        for agent in self.agents:
            backlog = agent.backlog(now)
            largest = max(largest, backlog)
            if backlog > self.options.interval:
                over += 1
                if agent.over_since is None:
                    agent.over_since = now - (backlog - self.options.interval)  # when the oldest record crossed
            elif agent.over_since is not None:
                self._close_stretch(agent, now)
        return over, largest

    def _close_stretch(self, agent: Agent, now: float) -> None:
        if self.restarted_at is not None and now >= self.restarted_at:
            agent.longest_over = max(agent.longest_over, now - agent.over_since)
        agent.over_since = None


def start_collector(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "collector.cli", "--log-level", "warning", "run", "--config", str(config)]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}, cwd=str(ROOT))


async def observe(fleet: Fleet, report: Report, until: float, restart: float, proc_pid: int) -> None:
    """Every second: backlogs and statuses; a row of the timeline every 5 s; steady state when reached."""
    options = fleet.options
    window: collections.Counter = collections.Counter()
    cpu_start = cpu_row = process_cpu_seconds(proc_pid)
    last_over_at, next_row = restart, time.monotonic()
    lag = 0.0  # how late this loop woke, at worst in the row: the load generator's own lag
    while (now := time.monotonic()) < until:
        over, largest = fleet.sample(now)
        window.update(fleet.statuses)
        report.statuses.update(fleet.statuses)
        fleet.statuses.clear()
        if over:
            last_over_at = now
            report.steady_after = None
        elif report.steady_after is None:
            report.steady_after = last_over_at - restart
        if now >= next_row:
            cpu = process_cpu_seconds(proc_pid)
            report.timeline.append((now - restart, over, largest, dict(window)))
            print(f"{now - restart:6.1f} s  agents over {options.interval:.0f} s of backlog: {over:5d}  largest backlog {largest:6.1f} s  "
                  f"collector CPU {cpu - cpu_row:5.2f} s  generator lag {lag:4.1f} s  replies {dict(sorted(window.items(), key=str))}", flush=True)
            window.clear()
            cpu_row, next_row, lag = cpu, next_row + 5.0, 0.0
        pause = 1.0 - (time.monotonic() - now) % 1.0
        await asyncio.sleep(pause)
        lag = max(lag, time.monotonic() - now - pause)
    report.collector_cpu = process_cpu_seconds(proc_pid) - cpu_start


async def cold_restart(options: Options, directory: Path) -> Report:
    port = free_port()
    config, env = collector_config(directory, port, options.agents, None, options.first_sight_share)
    report = Report(options)
    proc = start_collector(config, env, directory / "collector.log")
    try:
        wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
        fleet = Fleet(options, f"http://127.0.0.1:{port}/api/v1/write")
        tasks = [asyncio.create_task(fleet.run_agent(agent)) for agent in fleet.agents]
        print(f"{options.agents} agents x {options.series} series every {options.interval:.0f} s; warming up {options.warmup:.0f} s", flush=True)
        await asyncio.sleep(options.warmup)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        fleet.statuses.clear()
        fleet.restarted_at = killed
        print(f"collector killed (SIGKILL); restarting in {options.outage:.0f} s", flush=True)
        await asyncio.sleep(options.outage)
        proc = start_collector(config, env, directory / "collector.log")
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 120, proc)
        report.restart_seconds = time.monotonic() - killed
        acked_before = fleet.acked
        await observe(fleet, report, killed + options.after, killed, proc.pid)
        for agent in fleet.agents:
            if agent.over_since is not None:
                fleet._close_stretch(agent, time.monotonic())
        report.longest_over = max(agent.longest_over for agent in fleet.agents)
        report.samples_after = fleet.acked - acked_before
        report.rss_mib = rss_mib(proc.pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop(proc)
    return report


def print_report(report: Report) -> None:
    options = report.options
    print(f"\ncold restart: {options.agents} agents x {options.series} series every {options.interval:.0f} s "
          f"({options.agents * options.series / options.interval:.0f} samples/s), push interval {options.push_interval:.0f} s, "
          f"load average at the end: {' '.join(f'{one:.1f}' for one in os.getloadavg())}")
    print(f"kill to listening again: {report.restart_seconds:.1f} s (outage {options.outage:.0f} s)")
    print(f"replies after the kill: {dict(sorted(report.statuses.items(), key=str))}")
    print(f"5xx: {report.server_errors}; refused (4xx other than 429): {report.refused}")
    steady = "not reached" if report.steady_after is None else f"{report.steady_after:.1f} s after the kill"
    print(f"steady state (no agent over {options.interval:.0f} s of backlog from then on): {steady}; "
          f"the restarted collector's CPU over {options.after:.0f} s: {report.collector_cpu:.1f} s")
    print(f"longest stretch of one agent over {options.interval:.0f} s of backlog: {report.longest_over:.1f} s "
          f"(goal <= {GOAL_OVER_INTERVAL_SECONDS:.0f} s); samples acknowledged after the kill: {report.samples_after}; "
          f"collector RSS {report.rss_mib:.0f} MiB")
    met = report.server_errors == 0 and report.refused == 0 and report.longest_over <= GOAL_OVER_INTERVAL_SECONDS and report.steady_after is not None
    print("goal met" if met else "GOAL NOT MET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    options = Options(**vars(parser.parse_args()))
    random.seed(16)
    with tempfile.TemporaryDirectory(prefix="cold-restart-") as temporary:
        report = asyncio.run(cold_restart(options, Path(temporary)))
    print_report(report)


if __name__ == "__main__":
    main()
