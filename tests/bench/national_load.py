"""The national simulation's load generator: emulated push agents, as many per worker process as given, each
pushing its own series every interval to its shard with its own bearer token, the way the real agent does.

- Every agent produces one round of `series` samples per interval (its own phase within the interval) and keeps
  unsent rounds queued in order; a push carries every queued round (up to `max_rounds`) as one remote_write body.
- 2xx: the rounds leave the queue (counted as acknowledged). 429: wait Retry-After. 5xx, connection refused,
  timeouts: exponential backoff with jitter, the rounds stay queued. 401/403 (a credential problem): kept and
  retried, as the agent's sender does. Other 4xx: dropped and counted (the agent drops them too).
- Bodies are built from label blocks encoded once (foundation/remote_write.py): every agent sends the same label
  sets (the collector adds the agent's identity labels from its token), only timestamps and values differ.
- Connections: `connections` keep-alive connections per shard per worker, shared by that worker's agents.

Counters live in a shared array the orchestrator reads at any time; push latencies come back at the end.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from typing import Any

from foundation.httpclient import Endpoint, HttpClient, ProtocolError
from foundation.remote_write import HEADERS, compress, label_block, write_blocks

# per shard, in the shared array: FIELDS[i] at shard * len(FIELDS) + i; then GLOBAL_FIELDS
FIELDS = ("acked_samples", "pushes_ok", "errors", "throttled", "refused_samples", "cred_refused")
GLOBAL_FIELDS = ("pending_rounds", "max_pending_rounds", "agents_running", "produced_samples")
METRICS = 10  # metric names; series = METRICS x targets


def counter_count(shards: int) -> int:
    return shards * len(FIELDS) + len(GLOBAL_FIELDS)


def field_index(shard: int, name: str) -> int:
    return shard * len(FIELDS) + FIELDS.index(name)


def global_index(shards: int, name: str) -> int:
    return shards * len(FIELDS) + GLOBAL_FIELDS.index(name)


def label_blocks(series: int) -> list[bytes]:
    """The label sets every emulated agent sends: METRICS names x series/METRICS targets."""
    blocks = []
    for index in range(series):
        labels = (("__name__", f"netmon_sim_metric_{index % METRICS}"), ("module", "icmp"), ("target", f"target-{index // METRICS}"))
        blocks.append(label_block(labels))
    return blocks


@dataclass
class Settings:
    shard_urls: list[str]
    interval: float
    series: int
    start: float  # unix time of the first round's interval start
    connections: int = 16
    max_rounds: int = 40  # rounds per push at most (40 x 50 = the agent's batch_max_samples 2000)
    min_backoff: float = 1.0
    max_backoff: float = 10.0
    timeout: float = 10.0


@dataclass
class Agent:
    token: str
    shard: int
    phase: float
    pending: list[int] = field(default_factory=list)  # round timestamps, ms, oldest first
    retry_at: float = 0.0
    backoff: float = 0.0


class Worker:
    def __init__(self, settings: Settings, agents: list[Agent], counters: SynchronizedArray, producing: Synchronized) -> None:
        self.settings = settings
        self.agents = agents
        self.counters = counters
        self.producing = producing
        self.blocks = label_blocks(settings.series)
        self.latencies = array("d")  # (unix time, shard, seconds) per acknowledged push
        self.pools: list[asyncio.Queue[HttpClient]] = []

    async def run(self) -> None:
        for url in self.settings.shard_urls:
            pool: asyncio.Queue[HttpClient] = asyncio.Queue()
            endpoint = Endpoint.from_url(f"{url}/api/v1/write", timeout=self.settings.timeout)
            for _ in range(self.settings.connections):
                pool.put_nowait(HttpClient(endpoint, user_agent="netmon-national-sim"))
            self.pools.append(pool)
        shards = len(self.settings.shard_urls)
        self.counters[global_index(shards, "agents_running")] = len(self.agents)
        watcher = asyncio.create_task(self._count_pending())
        await asyncio.gather(*(self._agent(agent) for agent in self.agents))
        watcher.cancel()
        self._write_pending()
        for pool in self.pools:
            while not pool.empty():
                pool.get_nowait().close()

    async def _agent(self, agent: Agent) -> None:
        interval = self.settings.interval
        next_round = self.settings.start + agent.phase
        shards = len(self.settings.shard_urls)
        while True:
            now = time.time()
            state = self.producing.value  # 1 produce rounds, 0 only send what is queued, -1 stop now
            producing = state > 0
            if state < 0:
                self.counters[global_index(shards, "agents_running")] -= 1
                return
            if producing and now >= next_round:
                agent.pending.append(int(next_round * 1000))
                self.counters[global_index(shards, "produced_samples")] += self.settings.series
                next_round += interval
                continue
            if agent.pending and now >= agent.retry_at:
                await self._send(agent)
                continue
            if not producing and not agent.pending:
                self.counters[global_index(shards, "agents_running")] -= 1
                return
            wake = next_round if producing else now + 1.0
            if agent.pending:
                wake = min(wake, agent.retry_at)
            await asyncio.sleep(max(wake - now, 0.0))

    def _body(self, rounds: list[int]) -> bytes:
        samples = [tuple((ts, float(ts // 1000 % 100_000) + index / 100) for ts in rounds) for index in range(len(self.blocks))]
        return compress(write_blocks(zip(self.blocks, samples)))

    async def _send(self, agent: Agent) -> None:
        rounds = agent.pending[: self.settings.max_rounds]
        body = self._body(rounds)
        headers = HEADERS + (("Authorization", f"Bearer {agent.token}"),)
        pool = self.pools[agent.shard]
        client = await pool.get()
        began = time.time()
        try:
            reply = await client.post(body, headers)
        except (OSError, TimeoutError, ProtocolError):
            self._failed(agent, "errors")
            return
        finally:
            pool.put_nowait(client)
        self._answered(agent, rounds, reply.status, reply.headers, began)

    def _answered(self, agent: Agent, rounds: list[int], status: int, headers: dict[str, str], began: float) -> None:
        samples = len(rounds) * self.settings.series
        if 200 <= status < 300:
            del agent.pending[: len(rounds)]
            agent.backoff = 0.0
            self.counters[field_index(agent.shard, "acked_samples")] += samples
            self.counters[field_index(agent.shard, "pushes_ok")] += 1
            self.latencies.extend((began, float(agent.shard), time.time() - began))
        elif status == 429:
            self.counters[field_index(agent.shard, "throttled")] += 1
            agent.retry_at = time.time() + _retry_after(headers)
        elif status in (401, 403):
            self._failed(agent, "cred_refused")
        elif status >= 500:
            self._failed(agent, "errors")
        else:
            del agent.pending[: len(rounds)]
            self.counters[field_index(agent.shard, "refused_samples")] += samples

    def _failed(self, agent: Agent, kind: str) -> None:
        self.counters[field_index(agent.shard, kind)] += 1
        agent.backoff = min(max(agent.backoff * 2, self.settings.min_backoff), self.settings.max_backoff)
        agent.retry_at = time.time() + agent.backoff * random.uniform(0.8, 1.2)

    async def _count_pending(self) -> None:
        while True:
            self._write_pending()
            await asyncio.sleep(1.0)

    def _write_pending(self) -> None:
        shards = len(self.settings.shard_urls)
        lengths = [len(agent.pending) for agent in self.agents]
        self.counters[global_index(shards, "pending_rounds")] = sum(lengths)
        self.counters[global_index(shards, "max_pending_rounds")] = max(lengths, default=0)


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return max(float(headers.get("retry-after", "1")), 0.1)
    except ValueError:
        return 1.0


def worker_main(settings: Settings, agents: list[Agent], counters: SynchronizedArray, producing: Synchronized, results: Any) -> None:
    """A worker process: run its agents until the orchestrator stops production and every queue is empty (or
    the process is terminated); then send back the push latencies."""
    worker = Worker(settings, agents, counters, producing)
    asyncio.run(worker.run())
    results.put(worker.latencies.tobytes())
