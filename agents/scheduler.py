"""Run every target on its own interval, at a stable per-target offset, never stacking runs.

One asyncio task per target sleeps until the target's next slot, runs the probe (bounded by the
module timeout, under a process-wide concurrency cap) and records the result. A run that ends
after its next slot skips the missed slots and counts them as overruns. `run_now` runs a target off its
schedule (a path trace its parent's degradation triggers); a target never runs twice at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from agents.config.model import Target
from agents.resources import ProbeResources
from agents.results import ProbeResult
from agents.runner import run_target
from agents.selfmetrics import AgentMetrics
from agents.store import ResultStore

log = logging.getLogger(__name__)


OFFSET_GRID_SECONDS = 0.1


def stable_offset(agent_id: str, target_name: str, interval: float) -> float:
    """Where in its interval a target runs: spread evenly, the same across restarts.

    Offsets sit on a 100 ms grid, so targets that share a slot start on one event-loop wakeup: waking
    the loop costs more CPU than a probe's packets (measured: half the agent's CPU at 1,000 ICMP targets).
    """
    digest = hashlib.sha256(f"{agent_id}\0{target_name}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    slots = max(int(interval / OFFSET_GRID_SECONDS), 1)
    return int(fraction * slots) * (interval / slots)


def first_slot(now_wall: float, interval: float, offset: float) -> float:
    """The next wall-clock time t > now with t ≡ offset (mod interval)."""
    slots_passed = (now_wall - offset) // interval
    return (slots_passed + 1) * interval + offset


class Scheduler:
    def __init__(
        self,
        agent_id: str,
        store: ResultStore,
        metrics: AgentMetrics,
        resources: ProbeResources,
        max_concurrent: int,
        on_result: Callable[[Target, ProbeResult], None] | None = None,
    ) -> None:
        self._agent_id = agent_id
        self._store = store
        self._metrics = metrics
        self._resources = resources
        self._limit = asyncio.Semaphore(max_concurrent)
        self._on_result = on_result
        self._tasks: dict[str, tuple[Target, asyncio.Task[None]]] = {}
        self._running: set[str] = set()  # targets in a run now, scheduled or not
        self._unscheduled: dict[asyncio.Task[None], str] = {}  # runs started by run_now -> their target

    @property
    def targets(self) -> list[Target]:
        return [target for target, _ in self._tasks.values()]

    async def apply(self, targets: tuple[Target, ...], max_concurrent: int | None = None) -> None:
        """Start new targets, restart changed ones, stop removed ones; unchanged ones keep running."""
        if max_concurrent is not None:
            self._limit = asyncio.Semaphore(max_concurrent)
        wanted = {target.name: target for target in targets}
        stale = [name for name, (old, _) in self._tasks.items() if wanted.get(name) != old]
        await self._cancel(stale)
        for name, target in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._run_forever(target), name=f"probe:{name}")
                self._tasks[name] = (target, task)
        removed = set(stale) - set(wanted)
        self._store.retain(set(wanted))
        if removed:
            self._metrics.forget_targets(removed)

    async def stop(self) -> None:
        await self._cancel(list(self._tasks))

    def run_now(self, name: str) -> bool:
        """Run a scheduled target at once, off its schedule; False if it is unknown or in a run already."""
        entry = self._tasks.get(name)
        if entry is None or name in self._running:
            return False
        self._running.add(name)
        task = asyncio.create_task(self._run_once(entry[0], asyncio.get_running_loop().time()), name=f"probe-now:{name}")
        self._unscheduled[task] = name
        task.add_done_callback(self._run_now_done)
        return True

    def _run_now_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(self._unscheduled.pop(task))

    async def _cancel(self, names: list[str]) -> None:
        tasks = [self._tasks.pop(name)[1] for name in names]
        tasks += [task for task, name in self._unscheduled.items() if name in names]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_forever(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        interval = target.interval
        offset = stable_offset(self._agent_id, target.name, interval)
        now_wall = time.time()
        due = loop.time() + (first_slot(now_wall, interval, offset) - now_wall)
        while True:
            await asyncio.sleep(max(due - loop.time(), 0))
            if target.name not in self._running:  # else a run_now run is on: this slot is its
                self._running.add(target.name)
                try:
                    await self._run_once(target, due)
                finally:
                    self._running.discard(target.name)
            due += interval
            now = loop.time()
            if now > due:
                missed = int((now - due) // interval) + 1
                self._metrics.overruns.labels(target.name, target.module.name).inc(missed)
                due += missed * interval

    async def _run_once(self, target: Target, due: float) -> None:
        loop = asyncio.get_running_loop()
        async with self._limit:
            self._metrics.lag.observe(max(loop.time() - due, 0.0))
            self._metrics.in_flight.inc()
            try:
                result = await run_target(target, self._resources)
            finally:
                self._metrics.in_flight.dec()
        self._record(target, result)

    def _record(self, target: Target, result: ProbeResult) -> None:
        self._store.record(target, result)
        outcome = "success" if result.success else "failure"
        self._metrics.runs.labels(target.name, target.module.name, outcome).inc()
        if not result.success and result.failure is not None:
            self._metrics.failures.labels(target.name, target.module.name, result.failure.value).inc()
            log.info("probe %s (%s) failed: %s: %s", target.name, target.module.name, result.failure.value, result.detail)
        if self._on_result is not None:
            self._on_result(target, result)
