"""A cold restart with many agents pushing at once (issue 16): the collector is killed with SIGKILL while 200
agents push, started again, and sees every series for the first time at once. No push is answered with a 5xx or
refused for good, every agent's queue is back under one probe interval within seconds, and the samples keep
arriving. The hand-run version with 1,000 agents: tests/bench/cold_restart.py (figures in docs/benchmarks.md)."""

from __future__ import annotations

from tests.bench.cold_restart import Options, cold_restart

OPTIONS = Options(agents=200, series=50, interval=5.0, push_interval=1.0, warmup=8.0, after=25.0)


async def test_a_restart_under_200_pushing_agents_answers_no_5xx_and_every_queue_drains(tmp_path):
    report = await cold_restart(OPTIONS, tmp_path)
    assert report.server_errors == 0, report.statuses
    assert report.refused == 0, report.statuses
    assert report.statuses[204] > 0
    assert report.steady_after is not None and report.steady_after <= 15.0, report.timeline
    assert report.longest_over <= 15.0, report.timeline  # the goal's 60 s, for a 5 s interval and a 25 s run
    produced_after_steady = OPTIONS.agents * OPTIONS.series * (OPTIONS.after - report.steady_after - 2 * OPTIONS.interval) / OPTIONS.interval
    assert report.samples_after >= produced_after_steady
