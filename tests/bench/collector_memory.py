"""What the collector holds per series, by the line that allocated it: tracemalloc over the receive path in-process
(`Receiver.write` on bench_collector's bodies, province scale: 210 agents x 500 series), first sight of every series.

    cd /work/main && .venv/bin/python tests/bench/collector_memory.py [--forward]

`--forward`: as with a remote_write out configured (the forwarded label blocks are made too).
Then, without tracemalloc and with the collector's garbage-collector thresholds (collector.app.GC_THRESHOLDS),
first sight again on a fresh receiver and two steady rounds, for their CPU per sample (`time.process_time`) and
the garbage collections they ran.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.app import GC_THRESHOLDS  # noqa: E402
from collector.config import parse_collector_config  # noqa: E402
from collector.ingest import Receiver, TokenBucket  # noqa: E402
from collector.store import SeriesStore  # noqa: E402
from tests.bench import idle  # noqa: E402
from tests.bench.bench_collector import AGENTS, SERIES_PER_AGENT, collector_config, remote_write_rounds  # noqa: E402


def receiver_for(directory: Path, forward: bool) -> Receiver:
    path, env = collector_config(directory, 1, AGENTS, None)
    os.environ.update(env)
    config = parse_collector_config(path.read_text(encoding="utf-8"))
    receiver = Receiver(config, SeriesStore(config.agents, config.external_labels), lambda series, now: None, TokenBucket(1e12))
    receiver.forwarding = forward
    for bucket in receiver.shares.values():
        bucket.rate = 1e12
    return receiver


def push_round(receiver: Receiver, bodies: list[bytes]) -> None:
    for agent, body in enumerate(bodies):
        outcome = receiver.write(f"Bearer bench-token-{agent}", "snappy", body)
        assert outcome.status == 204, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward", action="store_true", help="forwarding on, as with a remote_write out")
    args = parser.parse_args()
    idle.start()  # no peer here, so no ratio; the CPU per sample is still worth little on a busy machine
    rounds = remote_write_rounds(AGENTS, 3)
    series = AGENTS * SERIES_PER_AGENT
    with tempfile.TemporaryDirectory(prefix="collector-memory-") as temporary:
        receiver = receiver_for(Path(temporary), args.forward)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    push_round(receiver, rounds[0])
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    print(f"{series} series, forwarding {'on' if args.forward else 'off'}: {sum(stat.size_diff for stat in stats) / series:.0f} B/series held")
    for stat in stats:
        if stat.size_diff >= series * 4:
            frame = stat.traceback[0]
            code = linecache.getline(frame.filename, frame.lineno).strip()[:90]
            print(f"{stat.size_diff / series:6.0f} B {stat.count_diff / series:5.2f} objects  {Path(frame.filename).name}:{frame.lineno}  {code}")
    with tempfile.TemporaryDirectory(prefix="collector-memory-") as temporary:
        receiver = receiver_for(Path(temporary), args.forward)
    gc.collect()
    gc.set_threshold(*GC_THRESHOLDS)
    for number, bodies in enumerate(rounds, start=1):
        collections = [generation["collections"] for generation in gc.get_stats()]
        begin = time.process_time()
        push_round(receiver, bodies)
        spent = time.process_time() - begin
        ran = [generation["collections"] - before for generation, before in zip(gc.get_stats(), collections)]
        print(f"round {number}{' (first sight)' if number == 1 else ''}: {spent / series * 1e6:.2f} µs/sample, garbage collections by generation {ran}")


if __name__ == "__main__":
    main()
