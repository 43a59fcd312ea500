"""National simulation: 13,000 push agents x 50 series every 15 s over 4 collector shards (made by
`netmon-collector shard` from one inventory) remote-writing into one VictoriaMetrics; after the steady run one
shard is SIGKILLed for 2 minutes and restarted. Hand-run (about 16 minutes with the defaults):

    cd /work/main && .venv/bin/python tests/bench/national_sim.py [--agents 13000] [--shards 4] [--run 600] [--kill 120]

tests/test_national_sim.py runs a short variant (400 agents, 2 shards, 60 s, a 20 s kill) in CI.

Report: every agent up on its shard before the kill and after the restart (the collectors' netmon_agent_up);
during the outage the other shards' agents all up, the killed shard's agencies the only ones without fresh data
in VictoriaMetrics; zero samples lost end to end (VictoriaMetrics' count, deduplicated per millisecond, against the
samples the generator got a 2xx for; it keeps unsent rounds queued and retries them as the agent does); per
shard CPU per sample, RSS per series and push latency over the steady window; VictoriaMetrics' ingest rate; the
generator's own CPU and queue (it must keep up for the figures to mean anything). The load generator is
tests/bench/national_load.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from array import array
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_collector import percentile, process_cpu_seconds, rss_mib  # noqa: E402
from tests.bench.national_load import (  # noqa: E402
    GLOBAL_FIELDS,
    METRICS,
    Agent,
    Settings,
    counter_count,
    field_index,
    global_index,
    worker_main,
)
from tests.support.shards import ShardPlan, running_shard, shard_inventory, write_inventory  # noqa: E402
from tests.support.tsdb import Peer, running_victoria_metrics  # noqa: E402

KILLED = 0  # index of the shard that is killed: shard-1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=13_000)
    parser.add_argument("--series", type=int, default=50, help="series per agent (a multiple of 10)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between an agent's rounds")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--by", choices=["hash", "district"], default="hash")
    parser.add_argument("--districts", type=int, default=130)
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before the steady window starts")
    parser.add_argument("--run", type=float, default=600.0, help="seconds from the start to the kill (the steady window ends there)")
    parser.add_argument("--kill", type=float, default=120.0, help="seconds the killed shard stays down")
    parser.add_argument("--recovery-timeout", type=float, default=180.0)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections per shard per worker")
    parser.add_argument("--max-backoff", type=float, default=10.0, help="an emulated agent's longest wait between retries")
    parser.add_argument("--dir", help="working directory (default: a new temporary one)")
    parser.add_argument("--json", help="also write the report here")
    return parser.parse_args(argv)


# --- the generator's processes


class Generator:
    def __init__(self, args: argparse.Namespace, plan: ShardPlan, tokens: dict[str, str]) -> None:
        context = multiprocessing.get_context("fork")
        self.shards = len(plan.names)
        self.producing = context.Value("i", 1, lock=False)
        self.results = context.Queue()
        self.counters = [context.Array("d", counter_count(self.shards), lock=False) for _ in range(args.workers)]
        settings = Settings(
            [plan.urls[name] for name in plan.names], args.interval, args.series, time.time() + 1.0,
            connections=args.connections, max_backoff=args.max_backoff,
        )
        shard_index = {name: index for index, name in enumerate(plan.names)}
        agents = [
            Agent(token, shard_index[plan.agents[agent]], random.Random(agent).uniform(0, args.interval))
            for agent, token in tokens.items()
        ]
        self.processes = [
            context.Process(target=worker_main, args=(settings, agents[number :: args.workers], self.counters[number], self.producing, self.results))
            for number in range(args.workers)
        ]
        for process in self.processes:
            process.start()

    def value(self, shard: int, name: str) -> float:
        return sum(counters[field_index(shard, name)] for counters in self.counters)

    def total(self, name: str) -> float:
        if name in GLOBAL_FIELDS:
            values = [counters[global_index(self.shards, name)] for counters in self.counters]
            return max(values) if name.startswith("max_") else sum(values)
        return sum(self.value(shard, name) for shard in range(self.shards))

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(process.pid) for process in self.processes if process.is_alive())

    def drain(self, timeout: float) -> array:
        """Stop producing rounds; wait until every queued round is acknowledged (or the timeout); the latencies."""
        self.producing.value = 0
        deadline = time.monotonic() + timeout
        while self.total("agents_running") > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        self.producing.value = -1
        latencies = array("d")
        for _ in self.processes:
            latencies.frombytes(self.results.get(timeout=60))
        for process in self.processes:
            process.join(30)
        return latencies


# --- the collectors and VictoriaMetrics, seen from outside


def http_text(url: str, timeout: float = 120.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.read().decode("utf-8", "replace")
    except OSError:
        return None


def agents_up(url: str) -> tuple[int, int] | None:
    """(up, down) from a shard's netmon_agent_up; None when the shard does not answer."""
    text = http_text(f"{url}/metrics")
    if text is None:
        return None
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("netmon_agent_up{")]
    return sum(value == "1.0" for value in values), sum(value != "1.0" for value in values)


def metrics_page(url: str) -> dict[str, float]:
    """How long a shard takes to serve its /metrics (what Prometheus scrapes every 15 s), and its size."""
    began = time.monotonic()
    text = http_text(f"{url}/metrics") or ""
    return {"seconds": time.monotonic() - began, "mib": len(text.encode()) / 2**20}


COLLECTOR_COUNTERS = (
    "netmon_collector_samples_dropped_total", "netmon_collector_samples_duplicate_total",
    "netmon_collector_remote_write_samples_dropped_total", "netmon_collector_remote_write_queue_pending_samples",
)


def collector_counters(url: str) -> dict[str, float]:
    """What a shard dropped (by reason), took as duplicates, and still has to forward: where a loss went."""
    out: dict[str, float] = {}
    for line in (http_text(f"{url}/metrics") or "").splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in COLLECTOR_COUNTERS:
            reason = line.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in line else ""
            key = name.removeprefix("netmon_collector_") + (f"{{{reason}}}" if reason else "")
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def vm_query(vm: Peer, query: str) -> list[dict]:
    text = http_text(f"{vm.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    return json.loads(text)["data"]["result"] if text else []


def by_shard(result: list[dict]) -> dict[str, float]:
    return {series["metric"].get("shard", ""): float(series["value"][1]) for series in result}


def vm_counter(vm: Peer, name: str) -> float:
    text = http_text(f"{vm.url}/metrics") or ""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


def stored_samples(vm: Peer, window: float) -> dict[str, float]:
    """Samples VictoriaMetrics holds per shard (one per series and millisecond: it runs with -dedup.minScrapeInterval=1ms)."""
    http_text(f"{vm.url}/internal/force_flush")
    totals: dict[str, float] = {}
    for metric in range(METRICS):
        for shard, count in by_shard(vm_query(vm, f"sum by (shard) (count_over_time(netmon_sim_metric_{metric}[{int(window)}s]))")).items():
            totals[shard] = totals.get(shard, 0.0) + count
    return totals


def fresh_agencies(vm: Peer, window: float) -> dict[str, float]:
    """Agencies per shard with a sample in the last `window` seconds."""
    query = f'count by (shard) (count by (agency, shard) (last_over_time(netmon_sim_metric_0{{target="target-0"}}[{int(window)}s])))'
    return by_shard(vm_query(vm, query))


# --- the run


@dataclass
class Mark:
    """Counters at one moment, for rates over a window."""

    time: float
    cpu: list[float]
    acked: list[float]
    generator_cpu: float
    vm_rows: float
    vm_cpu: float


def mark(generator: Generator, pids: list[int], vm: Peer) -> Mark:
    return Mark(
        time.monotonic(), [process_cpu_seconds(pid) for pid in pids],
        [generator.value(shard, "acked_samples") for shard in range(len(pids))], generator.cpu_seconds(),
        vm_counter(vm, "vm_rows_inserted_total"), vm_counter(vm, "process_cpu_seconds_total"),
    )


def wait_until(deadline: float, generator: Generator, watch: dict[str, float]) -> None:
    """Sleep to a monotonic deadline, keeping the generator's largest queue seen."""
    while time.monotonic() < deadline:
        watch["max_pending_rounds"] = max(watch.get("max_pending_rounds", 0.0), generator.total("max_pending_rounds"))
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def run(args: argparse.Namespace) -> dict:
    base = Path(args.dir or tempfile.mkdtemp(prefix="national-sim-"))
    base.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args), "directory": str(base)}
    with running_victoria_metrics(base / "vm", extra_args=["-dedup.minScrapeInterval=1ms"]) as vm, ExitStack() as stack:
        agencies = [(f"ag-{number:05d}", f"d-{number % args.districts:03d}") for number in range(args.agents)]
        forward = (
            f"remote_write:\n  - url: {vm.url}/api/v1/write\n    name: victoria-metrics\n"
            f"    queue: {{directory: {base / 'forward'}, max_bytes: 4294967296}}\n    interval: 1s\n    batch_max_samples: 20000\n"
        )
        inventory = write_inventory(base / "inventory.yml", agencies, forward, interval=f"{args.interval:g}s")
        plan = shard_inventory(inventory, base / "shards", args.shards, args.by)
        processes = {name: stack.enter_context(running_shard(plan, name, inventory.env, "warning")) for name in plan.names}
        rss_empty = [rss_mib(processes[name].pid) for name in plan.names]
        agents_of = [sum(1 for shard in plan.agents.values() if shard == name) for name in plan.names]
        report["shards"] = [{"name": name, "url": plan.urls[name], "agents": agents_of[i], "series": agents_of[i] * args.series} for i, name in enumerate(plan.names)]
        started = time.monotonic()
        generator = Generator(args, plan, inventory.tokens)
        watch: dict[str, float] = {}
        wait_until(started + args.warmup, generator, {})
        first = mark(generator, [processes[name].pid for name in plan.names], vm)
        wait_until(started + args.run, generator, watch)
        last = mark(generator, [processes[name].pid for name in plan.names], vm)
        rss = [rss_mib(processes[name].pid) for name in plan.names]
        report["steady"] = steady_figures(args, first, last, rss_empty, rss, agents_of, watch)
        report["up_before"] = {name: agents_up(plan.urls[name]) for name in plan.names}
        report["metrics_page"] = {name: metrics_page(plan.urls[name]) for name in plan.names}
        killed = plan.names[KILLED]
        report["outage"] = outage(args, plan, processes, killed, vm, generator)
        processes[killed] = stack.enter_context(running_shard(plan, killed, inventory.env, "warning"))
        report["recovery"] = recovery(args, plan, killed, agents_of[KILLED], generator)
        report["up_after"] = {name: agents_up(plan.urls[name]) for name in plan.names}
        latencies = generator.drain(args.drain_timeout)
        report["latency_ms"] = latency_figures(latencies, plan, time.time() - (time.monotonic() - first.time), time.time() - (time.monotonic() - last.time))
        report["loss"] = loss(args, plan, generator, vm, time.monotonic() - started)
        report["collectors_at_end"] = {name: collector_counters(plan.urls[name]) for name in plan.names}
    return report


def steady_figures(args, first: Mark, last: Mark, rss_empty: list[float], rss: list[float], agents_of: list[int], watch: dict) -> dict:
    seconds = last.time - first.time
    shards = []
    for index, agents in enumerate(agents_of):
        samples = last.acked[index] - first.acked[index]
        cpu = last.cpu[index] - first.cpu[index]
        shards.append({
            "samples_per_s": samples / seconds, "cpu_us_per_sample": cpu / samples * 1e6 if samples else float("nan"),
            "cpu_cores": cpu / seconds, "rss_mib": rss[index],
            "rss_bytes_per_series": (rss[index] - rss_empty[index]) * 2**20 / (agents * args.series) if agents else float("nan"),
        })
    return {
        "seconds": seconds, "shards": shards,
        "vm_rows_per_s": (last.vm_rows - first.vm_rows) / seconds, "vm_cpu_cores": (last.vm_cpu - first.vm_cpu) / seconds,
        "generator_cpu_cores": (last.generator_cpu - first.generator_cpu) / seconds,
        "generator_max_pending_rounds": watch.get("max_pending_rounds", 0.0),
        "offered_samples_per_s": args.agents * args.series / args.interval,
    }


def outage(args, plan: ShardPlan, processes: dict, killed: str, vm: Peer, generator: Generator) -> dict:
    """SIGKILL one shard; halfway (at least two intervals in) look at every shard and at what is fresh in the TSDB."""
    os.kill(processes[killed].pid, signal.SIGKILL)
    processes[killed].wait()
    began = time.monotonic()
    wait_until(began + max(2 * args.interval + 5, args.kill / 2), generator, {})
    seen = {
        "agents_up": {name: agents_up(plan.urls[name]) for name in plan.names},
        "fresh_agencies_in_tsdb": fresh_agencies(vm, 2 * args.interval),
    }
    wait_until(began + args.kill, generator, {})
    return seen


def recovery(args, plan: ShardPlan, killed: str, agents: int, generator: Generator) -> dict:
    began = time.monotonic()
    up = agents_up(plan.urls[killed])
    while (up is None or up[0] < agents) and time.monotonic() - began < args.recovery_timeout:
        time.sleep(args.interval)  # as often as Prometheus would scrape it: each look renders the whole /metrics
        up = agents_up(plan.urls[killed])
    return {"seconds_to_all_up": time.monotonic() - began, "up": up, "pending_rounds": generator.total("pending_rounds")}


def latency_figures(latencies: array, plan: ShardPlan, since: float, until: float) -> dict:
    per_shard: dict[str, list[float]] = {name: [] for name in plan.names}
    for index in range(0, len(latencies), 3):
        began, shard, seconds = latencies[index : index + 3]
        if since <= began <= until:
            per_shard[plan.names[int(shard)]].append(seconds)
    return {
        name: {"pushes": len(values), "p50": percentile(values, 0.5) * 1000, "p99": percentile(values, 0.99) * 1000} if values else {}
        for name, values in per_shard.items()
    }


def loss(args, plan: ShardPlan, generator: Generator, vm: Peer, elapsed: float) -> dict:
    """Wait (up to the drain timeout) for the collectors' forward queues to reach VictoriaMetrics, then compare."""
    acked = {name: generator.value(index, "acked_samples") for index, name in enumerate(plan.names)}
    deadline = time.monotonic() + args.drain_timeout
    stored = stored_samples(vm, elapsed + 120)
    while any(stored.get(name, 0.0) < acked[name] for name in plan.names) and time.monotonic() < deadline:
        time.sleep(5)
        stored = stored_samples(vm, elapsed + 120)
    return {
        "produced": generator.total("produced_samples"), "acked": acked, "stored": stored,
        "lost": {name: acked[name] - stored.get(name, 0.0) for name in plan.names},
        "unsent_at_end": generator.total("pending_rounds") * args.series,
        "refused_samples": generator.total("refused_samples"), "throttled_429": generator.total("throttled"),
        "errors": generator.total("errors"), "credential_refusals": generator.total("cred_refused"),
    }


def verdicts(report: dict) -> dict[str, bool]:
    shards = report["shards"]
    killed = shards[KILLED]["name"]
    during = report["outage"]
    return {
        "all_up_before": all(report["up_before"][s["name"]] == (s["agents"], 0) for s in shards),
        "all_up_after": all(report["up_after"][s["name"]] == (s["agents"], 0) for s in shards),
        "killed_shard_unreachable": during["agents_up"][killed] is None,
        "other_shards_all_up": all(during["agents_up"][s["name"]] == (s["agents"], 0) for s in shards if s["name"] != killed),
        "only_killed_shard_stale": during["fresh_agencies_in_tsdb"].get(killed, 0.0) == 0.0 and all(
            during["fresh_agencies_in_tsdb"].get(s["name"], 0.0) == agencies_of(report, s["name"]) for s in shards if s["name"] != killed
        ),
        "zero_loss": all(lost == 0 for lost in report["loss"]["lost"].values()) and report["loss"]["unsent_at_end"] == 0,
        "nothing_refused": report["loss"]["refused_samples"] == 0 and report["loss"]["credential_refusals"] == 0,
    }


def agencies_of(report: dict, shard: str) -> float:
    return float(next(s["agents"] for s in report["shards"] if s["name"] == shard))  # one agent per agency here


def print_report(report: dict) -> None:
    args, steady = report["args"], report["steady"]
    print(f"\nnational simulation: {args['agents']} agents x {args['series']} series every {args['interval']:g} s "
          f"({steady['offered_samples_per_s']:.0f} samples/s offered), {args['shards']} shards by {args['by']}, one VictoriaMetrics; "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"steady window {steady['seconds']:.0f} s; killed {report['shards'][KILLED]['name']} for {args['kill']:g} s")
    print(f"{'shard':9} {'agents':>6} {'series':>7} {'samples/s':>9} {'µs/sample':>9} {'cores':>5} {'RSS MiB':>7} {'B/series':>8} "
          f"{'p50 ms':>6} {'p99 ms':>6} {'acked':>10} {'in TSDB':>10} {'lost':>5}")
    for index, shard in enumerate(report["shards"]):
        name, figures, latency = shard["name"], steady["shards"][index], report["latency_ms"].get(shard["name"], {})
        print(f"{name:9} {shard['agents']:6d} {shard['series']:7d} {figures['samples_per_s']:9.0f} {figures['cpu_us_per_sample']:9.2f} "
              f"{figures['cpu_cores']:5.2f} {figures['rss_mib']:7.0f} {figures['rss_bytes_per_series']:8.0f} {latency.get('p50', float('nan')):6.1f} "
              f"{latency.get('p99', float('nan')):6.1f} {report['loss']['acked'][name]:10.0f} {report['loss']['stored'].get(name, 0):10.0f} "
              f"{report['loss']['lost'][name]:5.0f}")
    loss_ = report["loss"]
    shard_us = sum(shard["cpu_cores"] for shard in steady["shards"]) / sum(shard["samples_per_s"] for shard in steady["shards"]) * 1e6
    vm_us = steady["vm_cpu_cores"] / steady["vm_rows_per_s"] * 1e6 if steady["vm_rows_per_s"] else float("nan")
    print(f"CPU per sample: collector shards {shard_us:.2f} µs (receive, liveness, forward), VictoriaMetrics {vm_us:.2f} µs "
          f"(receive and store the same samples): ratio {shard_us / vm_us:.1f}")
    print(f"VictoriaMetrics: {steady['vm_rows_per_s']:.0f} rows/s ingested, {steady['vm_cpu_cores']:.2f} cores; generator: "
          f"{steady['generator_cpu_cores']:.2f} cores over {args['workers']} processes, largest agent queue {steady['generator_max_pending_rounds']:.0f} rounds")
    print("/metrics: " + ", ".join(f"{name} {page['mib']:.0f} MiB in {page['seconds']:.2f} s" for name, page in report["metrics_page"].items()))
    print(f"up before: {report['up_before']}; during the outage: {report['outage']['agents_up']}, fresh agencies in the TSDB: "
          f"{report['outage']['fresh_agencies_in_tsdb']}; restarted shard all up after {report['recovery']['seconds_to_all_up']:.0f} s; "
          f"after: {report['up_after']}")
    print(f"samples: produced {loss_['produced']:.0f}, acknowledged {sum(loss_['acked'].values()):.0f}, in the TSDB {sum(loss_['stored'].values()):.0f}, "
          f"unsent {loss_['unsent_at_end']:.0f}; 429s {loss_['throttled_429']:.0f}, push errors {loss_['errors']:.0f} (the outage), refused {loss_['refused_samples']:.0f}")
    print("collectors at the end (the killed one since its restart): " + "; ".join(
        f"{name} " + ", ".join(f"{key} {value:.0f}" for key, value in counters.items() if value) for name, counters in report["collectors_at_end"].items()))
    print("verdicts: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report["verdicts"].items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    report["verdicts"] = verdicts(report)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return 0 if all(report["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
