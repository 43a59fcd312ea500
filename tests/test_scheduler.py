"""The scheduler: own schedule per target, stable offsets, overruns counted not stacked, slow targets isolated."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from agents.catalog import parse_config
from agents.resources import ProbeResources
from agents.scheduler import Scheduler, first_slot, stable_offset
from agents.selfmetrics import AgentMetrics
from agents.store import ResultStore


def test_offsets_are_stable_and_spread_over_the_interval():
    offsets = [stable_offset("agent-1", f"target-{i}", 10.0) for i in range(1000)]
    assert offsets == [stable_offset("agent-1", f"target-{i}", 10.0) for i in range(1000)]
    assert all(0 <= o < 10 for o in offsets)
    per_second = [sum(1 for o in offsets if s <= o < s + 1) for s in range(10)]
    assert min(per_second) > 60 and max(per_second) < 140, per_second  # no thundering herd


def test_first_slot_is_the_next_aligned_time():
    assert first_slot(100.0, 10.0, 3.0) == 103.0
    assert first_slot(103.0, 10.0, 3.0) == 113.0
    assert first_slot(104.5, 10.0, 3.0) == 113.0


async def silent_server() -> tuple[asyncio.base_events.Server, int]:
    """Accepts connections and never says a word: a hung service."""
    async def hold(reader, writer):
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def config_for(silent_port: int, fast_port: int, fast_targets: int = 20):
    fast = "".join(
        f'  - {{name: fast-{i}, address: "127.0.0.1:{fast_port}", module: tcp_connect, interval: 500ms}}\n'
        for i in range(fast_targets)
    )
    return parse_config(
        f"""\
agent: {{id: sched-test, agency: test}}
max_concurrent_probes: 100
modules:
  tcp_connect: {{prober: tcp, timeout: 400ms}}
  hung_banner: {{prober: tcp, timeout: 1s, tcp: {{query_response: [{{expect: "^220"}}]}}}}
targets:
  - {{name: hung, address: "127.0.0.1:{silent_port}", module: hung_banner, interval: 1s}}
{fast}""",
        "sched.yml",
    )


async def run_scheduler(config, seconds: float):
    registry = CollectorRegistry()
    metrics, store, resources = AgentMetrics(registry), ResultStore(), ProbeResources()
    scheduler = Scheduler(config.agent.id, store, metrics, resources, config.max_concurrent_probes)
    await scheduler.apply(config.targets)
    await asyncio.sleep(seconds)
    await scheduler.stop()
    resources.close()
    return registry, store


async def test_hung_target_overruns_are_counted_not_stacked():
    silent, silent_port = await silent_server()
    fast, fast_port = await silent_server()
    try:
        registry, store = await run_scheduler(config_for(silent_port, fast_port, fast_targets=0), 6.5)
    finally:
        silent.close()
        fast.close()
    runs = registry.get_sample_value("netmon_agent_probe_runs_total", {"target": "hung", "module": "hung_banner", "result": "failure"})
    overruns = registry.get_sample_value("netmon_agent_probe_overruns_total", {"target": "hung", "module": "hung_banner"})
    # each run takes its full 1 s timeout (a bit more), so every second slot is skipped, never run twice at once
    assert 2 <= runs <= 4, runs
    assert overruns is not None and overruns >= 2, overruns
    assert store.get("hung").latest.failure.value == "timeout"


async def test_hung_target_does_not_delay_other_targets():
    silent, silent_port = await silent_server()
    fast, fast_port = await silent_server()
    try:
        started = time.monotonic()
        registry, store = await run_scheduler(config_for(silent_port, fast_port), 4.2)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
        fast.close()
    for i in range(20):
        runs = registry.get_sample_value("netmon_agent_probe_runs_total", {"target": f"fast-{i}", "module": "tcp_connect", "result": "success"})
        assert runs is not None and runs >= int(elapsed / 0.5) - 1, (i, runs)
    late = registry.get_sample_value("netmon_agent_scheduling_lag_seconds_count") - registry.get_sample_value(
        "netmon_agent_scheduling_lag_seconds_bucket", {"le": "0.1"}
    )
    assert late == 0  # nobody started more than 100 ms after its slot


async def test_reload_keeps_unchanged_targets_and_forgets_removed_ones():
    fast, fast_port = await silent_server()
    config = config_for(fast_port, fast_port, fast_targets=3)
    registry = CollectorRegistry()
    metrics, store, resources = AgentMetrics(registry), ResultStore(), ProbeResources()
    scheduler = Scheduler(config.agent.id, store, metrics, resources, 10)
    try:
        await scheduler.apply(config.targets)
        await asyncio.sleep(1.2)
        kept_task = scheduler._tasks["fast-0"][1]
        await scheduler.apply(tuple(t for t in config.targets if t.name != "fast-2"))
        assert scheduler._tasks["fast-0"][1] is kept_task
        assert store.get("fast-2") is None
        assert registry.get_sample_value(
            "netmon_agent_probe_runs_total", {"target": "fast-2", "module": "tcp_connect", "result": "success"}
        ) is None
    finally:
        await scheduler.stop()
        resources.close()
        fast.close()
