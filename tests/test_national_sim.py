"""The national simulation's short variant (tests/bench/national_sim.py): 400 push agents on 2 collector shards
generated from one inventory, one real VictoriaMetrics, a shard SIGKILLed for 20 s and restarted. Every agent is up
before and after, only the killed shard's agencies go stale meanwhile, and every sample acknowledged reaches the TSDB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_two_shards_survive_a_sigkill_of_one_with_every_agent_back_up_and_no_sample_lost(tmp_path):
    report_file = tmp_path / "report.json"
    argv = [
        sys.executable, str(ROOT / "tests" / "bench" / "national_sim.py"), "--agents", "400", "--shards", "2", "--interval", "5",
        "--warmup", "15", "--run", "45", "--kill", "20", "--workers", "1", "--max-backoff", "5",
        "--dir", str(tmp_path / "sim"), "--json", str(report_file),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert report_file.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["verdicts"] == {
        "all_up_before": True, "all_up_after": True, "killed_shard_unreachable": True, "other_shards_all_up": True,
        "only_killed_shard_stale": True, "zero_loss": True, "nothing_refused": True,
    }, run.stdout[-3000:]
    assert run.returncode == 0
    assert sum(report["loss"]["acked"].values()) >= 400 * 50 * (45 + 20) / 5 * 0.9  # the whole run's rounds were sent
    assert report["loss"]["errors"] > 0  # the killed shard's agents did meet the outage
    for shard in report["steady"]["shards"]:
        assert shard["samples_per_s"] > 0 and shard["cpu_us_per_sample"] > 0 and shard["rss_bytes_per_series"] > 0
    assert all(figures["p99"] > 0 for figures in report["latency_ms"].values())
