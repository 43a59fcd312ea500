"""POST /api/v1/write: the remote_write 1.0 receiver, authenticated per agent.

Order of checks, each with its status and a reason in the body: 401 unknown or missing bearer token; 413 too
large (compressed, or as announced by the snappy header before inflating); 400 a body that is not snappy +
WriteRequest, or series with bad names, unsorted or duplicate labels, reserved names, non-finite values; then
429 with Retry-After when the collector's sample budget per second is spent (only valid pushes use it up).
204 when every series was stored."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.remote_write import Decoder, RemoteWriteError, Series, TooLarge
from collector.config import CollectorConfig, InventoryAgent, token_digest
from collector.store import AgentState, Rejected, SeriesStore

LABEL_CACHE_PER_AGENT = 20_000  # label sets remembered per agent; an agency pushes a few hundred to a few thousand


class TokenBucket:
    """Samples per second for all agents together, with one second of burst."""

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


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    reason: str  # bounded: "ok" or a rejection reason
    message: str = ""
    agent: InventoryAgent | None = None
    samples: int = 0
    retry_after: int = 0


@dataclass(slots=True)
class Receiver:
    config: CollectorConfig
    store: SeriesStore
    forward: Callable[[list[Series], float], None]  # series to send on, and when they were accepted
    budget: TokenBucket
    forwarding: bool = True  # whether any remote_write out wants the accepted series
    tokens: dict[bytes, InventoryAgent] = field(init=False)
    decoders: dict[str, Decoder] = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.config.agent_by_token()
        limit = self.config.ingest.max_decompressed_bytes
        self.decoders = {agent.id: Decoder(limit, LABEL_CACHE_PER_AGENT) for agent in self.config.agents if agent.mode == "push"}

    def authenticate(self, authorization: str | None) -> InventoryAgent | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.tokens.get(token_digest(token.strip()))

    def _admit(self, samples: int) -> None:
        wait = self.budget.take(samples)
        if wait:
            raise Rejected("overloaded", "the collector is over its sample budget; retry later", math.ceil(wait))

    def write(self, authorization: str | None, content_encoding: str | None, body: bytes) -> Outcome:
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
        try:
            stored, forward = self.store.accept(state, series, time.time(), self.forwarding, self._admit)
        except Rejected as exc:
            status = 429 if exc.reason == "overloaded" else 400
            return Outcome(status, exc.reason, str(exc), agent, sum(len(one.samples) for one in series), exc.retry_after)
        if forward:
            self.forward(forward, state.last_seen)
        return Outcome(204, "ok", "", agent, stored)
