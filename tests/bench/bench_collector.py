"""Collector ingest at province scale (210 agents x 500 series every 15 s) and 5x, against Pushgateway and vmagent.

    cd /work/main && .venv/bin/python tests/bench/bench_collector.py [--scale 1] [--rounds 3] [--only collector,pushgateway,vmagent]

Every tool gets the same series: per agent 500 series of 20 metric names x 25 targets with 6 labels. Our
collector and vmagent get them as remote_write bodies (encoded before the clock starts), Pushgateway as text
pushes (POST /metrics/job/netmon/agent/<id>), each agent with its own bearer token for ours. Each round sends
every agent's push once; round 1 is first sight (label caches cold), later rounds are the steady state.

- ingest: samples / CPU seconds of the server process (utime + stime from /proc/PID/stat) over the steady rounds
  sent back to back by 4 concurrent keep-alive clients: what one core of the server sustains;
- push latency: p50/p99 of request round trips in a paced round (pushes spread over `--pace` seconds, as
  agents on a 15 s cadence do), 4 clients;
- /metrics: wall time of a full GET /metrics after ingest (median of 5), and its size;
- memory: RSS at the end, and bytes per series: (RSS after ingest, before /metrics - RSS when started, empty) / series.
The collector runs twice: without remote_write out, and with one to a sink that answers 204 (the forward
queue and its encoding then cost too). vmagent forwards to the same kind of sink.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from foundation.httpclient import Endpoint, HttpClient  # noqa: E402
from foundation.remote_write import HEADERS, Encoder, Series  # noqa: E402
from tests.bench import idle  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import running, wait_for_port  # noqa: E402
from tests.support.require import require_binary  # noqa: E402
from tests.support.rwsink import remote_write_sink  # noqa: E402

AGENTS = 210
SERIES_PER_AGENT = 500
METRICS = 20
CLIENTS = 4
WRITE_PATH = "/api/v1/write"


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def agent_series(agent: int, timestamp_ms: int) -> list[Series]:
    out = []
    for index in range(SERIES_PER_AGENT):
        labels = {
            "__name__": f"probe_bench_metric_{index % METRICS}_seconds", "target": f"target-{index // METRICS}",
            "module": "icmp", "instance": f"agent-{agent}", "job": "netmon-agent", "phase": "rtt",
        }
        out.append(Series(tuple(sorted(labels.items())), ((timestamp_ms, float(index) + agent / 1000),)))
    return out


def text_payload(agent: int) -> bytes:
    lines = []
    for labels, ((_, value),) in agent_series(agent, 0):
        named = dict(labels)
        name = named.pop("__name__")
        named.pop("instance")
        named.pop("job")
        lines.append(f"{name}{{{','.join(f'{k}={chr(34)}{v}{chr(34)}' for k, v in named.items())}}} {value!r}")
    return ("\n".join(lines) + "\n").encode()


def remote_write_rounds(agents: int, rounds: int) -> list[list[bytes]]:
    encoder = Encoder(cache_size=agents * SERIES_PER_AGENT)
    start = int(time.time() * 1000) - rounds * 15_000
    return [[encoder.encode(agent_series(a, start + r * 15_000)) for a in range(agents)] for r in range(rounds)]


async def send_all(base: str, requests: list[tuple[str, bytes, tuple]], pace: float = 0.0) -> list[float]:
    """POST every (path, body, headers) over CLIENTS keep-alive connections to base; round-trip seconds of each."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    latencies: list[float] = []
    gap = pace / len(requests) if pace else 0.0
    started = time.monotonic()
    endpoint = Endpoint.from_url(base, timeout=120)

    async def client(number: int) -> None:
        http = HttpClient(endpoint)
        sent = number
        while not queue.empty():
            path, body, headers = queue.get_nowait()
            if gap:
                await asyncio.sleep(max(started + sent * gap - time.monotonic(), 0))
                sent += CLIENTS
            http.endpoint = replace(endpoint, target=path)  # same host and port: the connection is kept
            begin = time.perf_counter()
            reply = await http.post(body, headers)
            latencies.append(time.perf_counter() - begin)
            if reply.status >= 300:
                raise RuntimeError(f"{base}{path}: {reply.status} {reply.text[:200]}")
        http.close()

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return latencies


def metrics_render(url: str) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(5):
        begin = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as reply:
            size = len(reply.read())
        times.append(time.perf_counter() - begin)
    return statistics.median(times), size


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * share), len(ordered) - 1)]


def measure(name: str, pid: int, base: str, rounds: list[list[tuple[str, bytes, tuple]]], pace: float) -> dict:
    samples_per_round = len(rounds[0]) * SERIES_PER_AGENT
    steady_samples = sum(len(requests) for requests in rounds[1:-1]) * SERIES_PER_AGENT
    rss_empty = rss_mib(pid)
    cpu0, wall0 = process_cpu_seconds(pid), time.monotonic()
    asyncio.run(send_all(base, rounds[0]))
    first_cpu, first_wall = process_cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    cpu1, wall1 = process_cpu_seconds(pid), time.monotonic()
    for requests in rounds[1:-1]:
        asyncio.run(send_all(base, requests))
    steady_cpu, steady_wall = process_cpu_seconds(pid) - cpu1, time.monotonic() - wall1
    latencies = asyncio.run(send_all(base, rounds[-1], pace=pace))
    time.sleep(2)  # let a forwarding server catch up before /metrics is timed
    rss_ingested = rss_mib(pid)  # before /metrics is rendered: its page is garbage, not what the series hold
    render, size = metrics_render(f"{base}/metrics")
    return {
        "name": name, "first_us": first_cpu / samples_per_round * 1e6, "first_rate": samples_per_round / first_wall,
        "steady_us": steady_cpu / steady_samples * 1e6 if steady_samples else float("nan"),
        "per_core": steady_samples / steady_cpu if steady_cpu else float("nan"),
        "wall_rate": steady_samples / steady_wall if steady_wall else float("nan"),
        "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "render_s": render, "render_mib": size / 2**20, "rss_mib": rss_mib(pid),
        "bytes_per_series": (rss_ingested - rss_empty) * 2**20 / samples_per_round,
    }


def collector_config(directory: Path, port: int, agents: int, sink_url: str | None, first_sight_share: float = 1.0) -> tuple[Path, dict[str, str]]:
    """first_sight_share 1.0: the benchmark measures the cost of first sight (cold_restart.py its admission)."""
    env, lines = {}, [f"listen: 127.0.0.1:{port}", f"ingest: {{first_sight_share: {first_sight_share}}}", "agencies:"]
    lines += [f"  - {{id: ag-{a}, name: 'Cơ quan {a}', district: d-{a % 11}, level: commune}}" for a in range(agents)]
    lines.append("agents:")
    for a in range(agents):
        env[f"BENCH_TOKEN_{a}"] = f"bench-token-{a}"
        lines.append(f"  - {{id: a-{a}, agency: ag-{a}, mode: push, bearer_token: '${{BENCH_TOKEN_{a}}}', interval: 15s, ttl: 1h}}")
    if sink_url:
        lines += ["remote_write:", f"  - url: {sink_url}", f"    queue: {{directory: {directory / 'queue'}, max_bytes: 2147483648}}",
                  "    batch_max_samples: 50000"]
    path = directory / "collector.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, env


def run_collector(directory: Path, agents: int, bodies: list[list[bytes]], pace: float, forward: bool) -> dict:
    port = free_port()
    with remote_write_sink() as (sink_url, _):
        config, env = collector_config(directory, port, agents, sink_url if forward else None)
        argv = [sys.executable, "-m", "collector.cli", "--log-level", "warning", "run", "--config", str(config)]
        rounds = [
            [(WRITE_PATH, body, HEADERS + (("Authorization", f"Bearer bench-token-{a}"),)) for a, body in enumerate(bodies_of_round)]
            for bodies_of_round in bodies
        ]
        with running(argv, log_path=str(directory / "collector.log"), env=env, cwd=str(ROOT)) as proc:
            wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
            name = "netmon-collector" + (" + remote_write out" if forward else "")
            return measure(name, proc.pid, f"http://127.0.0.1:{port}", rounds, pace)


def run_vmagent(directory: Path, bodies: list[list[bytes]], pace: float) -> dict:
    binary = require_binary("vmagent", "victoria-metrics")
    port = free_port()
    with remote_write_sink() as (sink_url, _):
        argv = [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-remoteWrite.url={sink_url}",
                f"-remoteWrite.tmpDataPath={directory / 'vmagent'}", "-loggerLevel=ERROR"]
        rounds = [[(WRITE_PATH, body, HEADERS) for body in bodies_of_round] for bodies_of_round in bodies]
        with running(argv, log_path=str(directory / "vmagent.log")) as proc:
            wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
            return measure("vmagent (remote_write in, to a sink)", proc.pid, f"http://127.0.0.1:{port}", rounds, pace)


def run_pushgateway(directory: Path, agents: int, rounds: int, pace: float, sample: int) -> dict:
    """Round 1 pushes every agent's group (filling the registry); later rounds only the first `sample` agents
    when sample > 0: Pushgateway's cost per push grows with its registry, and at 5x a full round takes ~30 min."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    payloads = [text_payload(a) for a in range(agents)]
    argv = [binary, f"--web.listen-address=127.0.0.1:{port}"]
    with running(argv, log_path=str(directory / "pushgateway.log")) as proc:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        text = (("Content-Type", "text/plain; version=0.0.4"),)
        pushes = [(f"/metrics/job/netmon/agent/a-{a}", payloads[a], text) for a in range(agents)]
        later = pushes[:sample] if sample else pushes
        name = "prometheus-pushgateway (text POST)" + (f", {len(later)}/{agents} after round 1" if sample else "")
        return measure(name, proc.pid, f"http://127.0.0.1:{port}", [pushes] + [later] * (rounds - 1), pace)


def print_table(results: list[dict], agents: int) -> None:
    print(f"\n{agents} agents x {SERIES_PER_AGENT} series = {agents * SERIES_PER_AGENT} series per round; {os.cpu_count()} CPUs, one run")
    header = f"{'':40} {'first µs/s':>10} {'steady µs/s':>11} {'samples/s/core':>14} {'wall samples/s':>14} {'p50 ms':>7} {'p99 ms':>7} {'/metrics s':>10} {'MiB':>6} {'RSS MiB':>8} {'B/series':>8}"
    print(header)
    for r in results:
        print(f"{r['name']:40} {r['first_us']:10.2f} {r['steady_us']:11.2f} {r['per_core']:14.0f} {r['wall_rate']:14.0f} "
              f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['render_s']:10.3f} {r['render_mib']:6.1f} {r['rss_mib']:8.0f} {r['bytes_per_series']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1, help="multiple of the province (210 agents)")
    parser.add_argument("--rounds", type=int, default=4, help="pushes per agent: 1 first-sight, then steady, the last paced")
    parser.add_argument("--pace", type=float, default=15.0, help="seconds the paced round's pushes are spread over")
    parser.add_argument("--only", default="collector,forward,vmagent,pushgateway")
    parser.add_argument("--pushgateway-sample", type=int, default=0,
                        help="after its first (filling) round, Pushgateway gets only this many agents' pushes per round (0: all)")
    args = parser.parse_args()
    load = idle.start()  # other work on the machine: the figures are CPU time, but caches and cores are shared
    agents = AGENTS * args.scale
    only = set(args.only.split(","))
    print(f"encoding {args.rounds} rounds of {agents} bodies ...", flush=True)
    bodies = remote_write_rounds(agents, args.rounds)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as temporary:
        directory = Path(temporary)
        for key, run in (
            ("collector", lambda d: run_collector(d, agents, bodies, args.pace, forward=False)),
            ("forward", lambda d: run_collector(d, agents, bodies, args.pace, forward=True)),
            ("vmagent", lambda d: run_vmagent(d, bodies, args.pace)),
            ("pushgateway", lambda d: run_pushgateway(d, agents, args.rounds, args.pace, args.pushgateway_sample)),
        ):
            if key in only:
                sub = directory / key
                sub.mkdir()
                print(f"running {key} ...", flush=True)
                results.append(run(sub))
    print_table(results, agents)
    print_ratios(results, load)


def print_ratios(results: list[dict], load: float) -> None:
    vmagent = next((r for r in results if r["name"].startswith("vmagent")), None)
    for r in results:
        if vmagent is not None and r is not vmagent and r["name"].startswith("netmon-collector"):
            print(idle.ratio_line(f"{r['name']} / vmagent, steady µs per sample", r["steady_us"] / vmagent["steady_us"], load))


if __name__ == "__main__":
    main()
