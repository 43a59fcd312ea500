"""No loss end to end: a real agent pushes every 5 s to the collector, which forwards to VictoriaMetrics. The
collector is stopped for 60 s; meanwhile the agent is killed with SIGKILL and restarted. When the collector is
back, every sample the agent produced is in VictoriaMetrics, with its original timestamp."""

from __future__ import annotations

import os
import signal
import time

from tests.support.ports import free_port
from tests.support.procs import stop, wait_for_port
from tests.support.tsdb import running_victoria_metrics, victoria_metrics_export
from tests.test_agent_run import metric_value
from tests.test_collector import TOKENS, running_collector, wait_until
from tests.test_collector_agents import start_agent

INTERVAL_MS = 5_000
SCHEDULING_MARGIN_MS = 2_500  # a probe run's start may lag its slot on a loaded machine; a lost run shifts by 5 s
OUTAGE_SECONDS = 60


def agent_yaml(port: int, collector_port: int, token_file, queue) -> str:
    return f"""\
agent: {{id: so-tttt-1, agency: so-tttt}}
listen: 127.0.0.1:{port}
defaults: {{interval: 5s, timeout: 1s}}
modules:
  tcp_connect: {{prober: tcp}}
targets:
  - {{name: self-port, address: "127.0.0.1:{port}", module: tcp_connect}}
  - {{name: refused, address: "127.0.0.1:{free_port()}", module: tcp_connect}}
push:
  url: http://127.0.0.1:{collector_port}/api/v1/write
  bearer_token_file: {token_file}
  interval: 5s
  min_backoff: 200ms
  max_backoff: 2s
  queue: {{directory: {queue}, fsync_interval: 200ms}}
"""


def missing_slots(timestamps: list[int]) -> int:
    """Probe runs between the first and the last timestamp that have no sample (runs are INTERVAL_MS apart)."""
    if not timestamps:
        return 0
    slots = round((timestamps[-1] - timestamps[0]) / INTERVAL_MS) + 1
    return slots - len(timestamps)


def lost_samples(exported: dict[tuple, list[tuple[int, float]]], killed_at_ms: float, cutoff_ms: float) -> list[str]:
    """What VictoriaMetrics lacks of the two targets' runs: before the kill, every slot up to the last run queued
    before it; after the restart, every slot up to a run after `cutoff_ms` (runs after the cutoff may still be
    on their way; runs up to it must all be there)."""
    if len(exported) != 2:
        return [f"{len(exported)} series instead of 2"]
    lost = []
    for labels, samples in exported.items():
        target = dict(labels)["target"]
        timestamps = sorted({ts for ts, _ in samples})
        before_kill = [ts for ts in timestamps if ts < killed_at_ms]
        after_restart = [ts for ts in timestamps if ts > killed_at_ms]
        if missing_slots(before_kill) or not before_kill or before_kill[-1] <= killed_at_ms - INTERVAL_MS - SCHEDULING_MARGIN_MS:
            lost.append(f"{target}: runs before the kill: {before_kill}")
        if missing_slots(after_restart) or not after_restart or after_restart[-1] <= cutoff_ms:
            lost.append(f"{target}: runs after the restart: {after_restart}")
    return lost


def test_every_sample_reaches_victoria_metrics_across_a_collector_outage_and_an_agent_sigkill(tmp_path):
    collector_port, agent_port = free_port(), free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["so-tttt-1"] + "\n")
    config = agent_yaml(agent_port, collector_port, token_file, tmp_path / "agent-queue")
    with running_victoria_metrics(tmp_path / "vm") as vm:
        forward = (
            f"remote_write:\n  - url: {vm.url}/api/v1/write\n    queue: {{directory: {tmp_path / 'forward-queue'}, fsync_interval: 200ms}}\n"
            "    interval: 1s\n    min_backoff: 200ms\n    max_backoff: 1s\n"
        )
        selector = '{__name__="probe_success"}'
        first_context, _ = start_agent(tmp_path / "agent", config)
        with first_context as first:
            with running_collector(tmp_path / "collector", forward, port=collector_port):
                wait_until(lambda: len(victoria_metrics_export(vm, selector)) == 2, 30, "the first samples in VictoriaMetrics", step=1)
            outage_started = time.monotonic()
            time.sleep(15)  # collector down: the agent queues
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            killed_at_ms = time.time() * 1000
        second_context, _ = start_agent(tmp_path / "agent", config)
        with second_context as second:
            wait_for_port("127.0.0.1", agent_port, proc=second)
            time.sleep(max(OUTAGE_SECONDS - (time.monotonic() - outage_started), 0))
            with running_collector(tmp_path / "collector", forward, port=collector_port) as collector:
                # every probe run up to here was produced while the collector was down or before: the end
                # condition is that VictoriaMetrics holds every one of them and the next run after
                cutoff_ms = time.time() * 1000
                deadline = time.monotonic() + 90
                while lost_samples(victoria_metrics_export(vm, selector), killed_at_ms, cutoff_ms) and time.monotonic() < deadline:
                    time.sleep(1)
                collector_text = collector.metrics()
            stop(second)
        exported = victoria_metrics_export(vm, selector)
    assert len(exported) == 2
    assert lost_samples(exported, killed_at_ms, cutoff_ms) == []
    for labels, samples in exported.items():
        target = dict(labels)["target"]
        assert dict(labels)["agency"] == "so-tttt" and dict(labels)["agent"] == "so-tttt-1"
        timestamps = sorted({ts for ts, _ in samples})
        outage_samples = [ts for ts in timestamps if killed_at_ms - 15_000 < ts < killed_at_ms + OUTAGE_SECONDS * 1000 - 15_000]
        assert len(outage_samples) >= 10, f"{target}: only {len(outage_samples)} samples from the outage"
    assert metric_value(collector_text, "netmon_collector_remote_write_samples_dropped_total", reason="rejected") == 0
