"""remote_write out sends no request larger than its batch_max_samples, even when thousands of series end at once
(their stale markers used to be one queue record, sent whole: the national simulation's cold restart made one of
220,600 samples, which VictoriaMetrics refuses with 400 beyond 32 MB unpacked, and the sender then drops)."""

from __future__ import annotations

import math

from foundation import remote_write as rw
from foundation.remote_write import is_stale_marker, make_series
from tests.support.rwsink import remote_write_sink
from tests.test_collector import TOKENS, now_ms, push, running_collector, wait_until

BATCH = 100


def stale_markers(received: list[list[rw.Series]]) -> int:
    return sum(1 for request in received for series in request for _, value in series.samples if math.isnan(value) and is_stale_marker(value))


def test_stale_markers_of_many_series_ending_together_go_out_in_batches_of_batch_max_samples(tmp_path):
    with remote_write_sink(keep=True) as (url, received):
        extra = (
            "defaults: {interval: 1s, ttl: 2s}\n"
            f"remote_write:\n  - url: {url}\n    queue: {{directory: {tmp_path / 'queue'}, fsync_interval: 100ms}}\n"
            f"    interval: 200ms\n    batch_max_samples: {BATCH}\n"
        )
        with running_collector(tmp_path / "collector", extra) as collector:
            for agent in ("so-tttt-1", "xa-my-tho-1"):
                body = rw.encode([make_series("probe_success", {"target": f"t-{n}", "module": "icmp"}, [(now_ms(), 1.0)]) for n in range(90)])
                status, text, _ = push(collector.url, body, TOKENS[agent])
                assert status == 204, text
            wait_until(lambda: stale_markers(received) >= 180, 30, "the stale markers of both agents' 180 series")
    sizes = [sum(len(series.samples) for series in request) for request in received]
    assert stale_markers(received) == 180
    assert max(sizes) <= BATCH, sizes

