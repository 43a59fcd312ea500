"""POST /api/v1/write: the remote_write 1.0 receiver, authenticated per agent.

Order of checks, each with its status and a reason in the body: 401 unknown or missing bearer token; 413 too
large (compressed, or as announced by the snappy header before inflating); 400 a body that is not snappy +
WriteRequest, or series with bad names, unsorted or duplicate labels, reserved names; then 429 with
Retry-After when the push brings series not seen before and the time for those (`ingest.first_sight_share` of a
core) is spent, or the agent's share of the sample budget, or the collector's whole budget per second, is spent
(only valid pushes use them up). NaN and ±Inf are values like any other (Prometheus and vmagent send them).
204 when every series was stored, or dropped as a duplicate (collector/store.py: a sample at or before the
last accepted timestamp of its series, e.g. a batch sent again because its acknowledgement was lost), or dropped
for a timestamp outside the window the TSDB accepts (`ingest.max_sample_age`, `ingest.max_sample_in_future`):
those are counted and logged here, as VictoriaMetrics drops them, and do not cost the push's other samples."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.config_model import CollectorConfig, InventoryAgent, token_digest
from collector.store import AgentState, OutOfBounds, Rejected, SeriesStore
from foundation.remote_write import BlockSeries, Decoder, RemoteWriteError, TooLarge

LABEL_CACHE_PER_AGENT = 20_000  # label sets remembered per agent; an agency pushes a few hundred to a few thousand


class TokenBucket:
    """Samples per second (for all agents together, or for one), with one second of burst."""

    def __init__(self, rate: float, clock=time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._updated = clock()

    def take(self, amount: int) -> float:
        """0 if taken, else the seconds until `amount` would be available (nothing is taken then)."""
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if amount <= self._tokens or (amount > self.rate and self._tokens >= self.rate):
            self._tokens -= amount  # a push larger than the whole budget passes alone, on a full bucket
            return 0.0
        return (min(amount, self.rate) - self._tokens) / self.rate

    def give_back(self, amount: int) -> None:
        """Return what a push took that was refused by a later check."""
        self._tokens = min(self.rate, self._tokens + amount)

    def spend(self, amount: float) -> None:
        """Take what was used without asking first (work measured after it was done): the bucket may go below
        zero, and `take` refuses until it has refilled."""
        self._tokens -= amount


def agent_share(total: int, configured: int | None, push_agents: int) -> int:
    """One agent's samples per second: as configured, else twice an even share of the total (at least 1,000),
    so an agent replaying its queue after an outage is paced but never starved."""
    if configured is not None:
        return configured
    return min(total, max(1_000, 2 * total // max(push_agents, 1)))


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    reason: str  # bounded: "ok" or a rejection reason
    message: str = ""
    agent: InventoryAgent | None = None
    samples: int = 0
    retry_after: int = 0
    out_of_bounds: OutOfBounds | None = None  # samples of an accepted push dropped for their timestamps


@dataclass(slots=True)
class Receiver:
    config: CollectorConfig
    store: SeriesStore
    forward: Callable[[list[BlockSeries], float], None]  # series to send on, and when they were accepted
    budget: TokenBucket
    # seconds of work per second (`ingest.first_sight_share` of a core) for pushes that bring series not seen before:
    # beyond it, such pushes get 429 with Retry-After and pushes of known series still pass, so a cold restart with
    # every agent at once (docs/benchmarks.md) answers at once rather than queueing past the agents' timeouts
    first_sight: TokenBucket = field(init=False)
    forwarding: bool = field(init=False)  # whether any remote_write out wants the accepted series
    tokens: dict[bytes, InventoryAgent] = field(init=False)
    decoders: dict[str, Decoder] = field(init=False)
    shares: dict[str, TokenBucket] = field(init=False)  # per push agent: one agent cannot spend everyone's budget

    def __post_init__(self) -> None:
        self.decoders = {}
        self.shares = {}
        self.first_sight = TokenBucket(self.config.ingest.first_sight_share, time.perf_counter)
        self.follow(self.config)

    def follow(self, config: CollectorConfig) -> None:
        """Take a (re)loaded config: its credentials, limits and push agents; kept agents keep their label cache."""
        limit = config.ingest.max_decompressed_bytes
        decoders = {agent.id: self.decoders.get(agent.id) or Decoder(limit, LABEL_CACHE_PER_AGENT) for agent in config.agents if agent.mode == "push"}
        for decoder in decoders.values():
            decoder.max_decompressed_bytes = limit
        self.config = config
        self.tokens = config.agent_by_token()
        self.decoders = decoders
        self.budget.rate = config.ingest.max_samples_per_second
        self.first_sight.rate = config.ingest.first_sight_share
        share = agent_share(config.ingest.max_samples_per_second, config.ingest.max_samples_per_second_per_agent, len(decoders))
        self.shares = {agent_id: self.shares.get(agent_id) or TokenBucket(share) for agent_id in decoders}
        for bucket in self.shares.values():
            bucket.rate = share
        self.forwarding = bool(config.remote_write)

    def authenticate(self, authorization: str | None) -> InventoryAgent | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.tokens.get(token_digest(token.strip()))

    def _admit(self, share: TokenBucket, samples: int, new_series: int) -> None:
        if new_series and (wait := self.first_sight.take(0)):
            raise Rejected("overloaded", "the collector is busy with series it has not seen before; retry later", math.ceil(wait))
        wait = share.take(samples)
        if wait:
            raise Rejected("overloaded", "this agent is over its share of the sample budget; retry later", math.ceil(wait))
        wait = self.budget.take(samples)
        if wait:
            share.give_back(samples)
            raise Rejected("overloaded", "the collector is over its sample budget; retry later", math.ceil(wait))

    def write(self, authorization: str | None, content_encoding: str | None, body: bytes) -> Outcome:
        started = time.perf_counter()
        agent = self.authenticate(authorization)
        if agent is None:
            return Outcome(401, "unauthorized", "missing or unknown bearer token")
        if content_encoding is not None and content_encoding.strip().lower() != "snappy":
            return Outcome(400, "bad_encoding", f"Content-Encoding {content_encoding!r} is not supported; send snappy", agent)
        try:
            series = self.decoders[agent.id].decode(body)
        except TooLarge as exc:
            return Outcome(413, exc.reason, str(exc), agent)
        except RemoteWriteError as exc:
            return Outcome(400, exc.reason, str(exc), agent)
        state: AgentState = self.store.states[agent.id]
        now = time.time()
        try:
            share = self.shares[agent.id]
            new_series = 0

            def admit(count: int, new: int) -> None:
                nonlocal new_series
                self._admit(share, count, new)
                new_series = new

            stored, forward = self.store.accept(state, series, now, self.forwarding, admit, self.window(now))
        except Rejected as exc:
            status = 429 if exc.reason == "overloaded" else 400
            return Outcome(status, exc.reason, str(exc), agent, sum(len(one.samples) for one in series), exc.retry_after)
        if forward:
            self.forward(forward, state.last_seen)
        if new_series:
            self.first_sight.spend(time.perf_counter() - started)
        return Outcome(204, "ok", "", agent, stored, out_of_bounds=state.out_of_bounds)

    def window(self, now: float) -> tuple[int, int]:
        """The oldest and newest sample timestamps (ms) accepted at `now`."""
        ingest = self.config.ingest
        return int((now - ingest.max_sample_age) * 1000), int((now + ingest.max_sample_in_future) * 1000)
