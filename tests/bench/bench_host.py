"""CPU per scrape of the agent's host collectors vs Debian's prometheus-node-exporter, one run.

    cd /work/main && .venv/bin/python tests/bench/bench_host.py [--scrapes 500]

Both servers run on loopback and are scraped over HTTP by this process, one scrape at a time; the
CPU of each server process (all threads, utime + stime from /proc/PID/stat) is read before and after.
node_exporter runs with only the collectors the agent has (same exclusion regexes), with no collectors
(its fixed cost per scrape) and with its Debian defaults for reference; the agent runs with host
metrics on and off. Subtracting each server's fixed cost leaves the collectors' own cost. The
in-process figures are HostCollector.render (the text /metrics writes), its prometheus_client families through
foundation/textformat.py (as before) and through prometheus_client's generate_latest, without HTTP or self-metrics.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from agents.catalog import parse_config  # noqa: E402
from agents.host import COLLECTORS  # noqa: E402
from agents.host.collector import HostCollector  # noqa: E402
from agents.host.config import host_config  # noqa: E402
from agents.host.diskstats import DEFAULT_DEVICE_EXCLUDE  # noqa: E402
from agents.host.filesystem import DEFAULT_FS_TYPES_EXCLUDE, DEFAULT_MOUNT_POINTS_EXCLUDE  # noqa: E402
from foundation.textformat import render_families  # noqa: E402
from tests.bench import idle  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import running, wait_for_port  # noqa: E402

WARMUP_SCRAPES = 20
SAME_AS_AGENT = [
    "--collector.disable-defaults",
    *(f"--collector.{name}" for name in COLLECTORS),
    f"--collector.filesystem.mount-points-exclude={DEFAULT_MOUNT_POINTS_EXCLUDE}",
    f"--collector.filesystem.fs-types-exclude={DEFAULT_FS_TYPES_EXCLUDE}",
    f"--collector.diskstats.device-exclude={DEFAULT_DEVICE_EXCLUDE}",
    "--collector.netdev.device-exclude=",  # Debian's default excludes lo; upstream's and ours do not
]
AGENT_CONFIG = """\
agent: {{id: bench, agency: bench}}
listen: 127.0.0.1:{port}
host: {{enabled: {enabled}}}
"""


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def series(text: str, prefix: str = "") -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#") and line.startswith(prefix))


def scrape_cpu(pid: int, port: int, scrapes: int) -> tuple[float, str]:
    """CPU seconds the server spent per scrape, and its last answer."""
    url = f"http://127.0.0.1:{port}/metrics"
    for _ in range(WARMUP_SCRAPES):
        urllib.request.urlopen(url, timeout=10).read()
    before = process_cpu_seconds(pid)
    for _ in range(scrapes):
        body = urllib.request.urlopen(url, timeout=10).read()
    return (process_cpu_seconds(pid) - before) / scrapes, body.decode()


@contextmanager
def server(argv: Sequence[str], port: int) -> Iterator[int]:
    with running(argv, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield proc.pid


def bench_node_exporter(binary: str, flags: Sequence[str], scrapes: int) -> tuple[float, str]:
    port = free_port()
    with server([binary, f"--web.listen-address=127.0.0.1:{port}", *flags], port) as pid:
        return scrape_cpu(pid, port, scrapes)


def bench_agent(scrapes: int, host_enabled: bool) -> tuple[float, str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.yml"
        config.write_text(AGENT_CONFIG.format(port=port, enabled=str(host_enabled).lower()), encoding="utf-8")
        with server([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], port) as pid:
            return scrape_cpu(pid, port, scrapes)


def bench_in_process(scrapes: int, writer: str = "direct") -> tuple[float, str]:
    """writer "direct": HostCollector.render, what /metrics writes; "textformat": its prometheus_client families
    through foundation's text writer (before this round); "generate_latest": prometheus_client's writer."""
    config = parse_config(AGENT_CONFIG.format(port=1, enabled="true"))
    host = HostCollector(lambda: host_config(config))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(host)

    def render() -> str:
        if writer == "generate_latest":
            return generate_latest(registry).decode()
        if writer == "textformat":
            return "".join(render_families(registry.collect()))
        return host.render()

    for _ in range(WARMUP_SCRAPES):
        render()
    before = time.process_time()
    for _ in range(scrapes):
        body = render()
    return (time.process_time() - before) / scrapes, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=500)
    args = parser.parse_args()
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        print("prometheus-node-exporter is not installed (apt-get install prometheus-node-exporter)", file=sys.stderr)
        return 1
    load = idle.start()
    ne_same, ne_same_text = bench_node_exporter(binary, SAME_AS_AGENT, args.scrapes)
    ne_none, ne_none_text = bench_node_exporter(binary, ["--collector.disable-defaults"], args.scrapes)
    ne_default, ne_default_text = bench_node_exporter(binary, [], args.scrapes)
    agent, agent_text = bench_agent(args.scrapes, host_enabled=True)
    agent_none, agent_none_text = bench_agent(args.scrapes, host_enabled=False)
    in_process, in_process_text = bench_in_process(args.scrapes)
    in_process_families, in_process_families_text = bench_in_process(args.scrapes, "textformat")
    in_process_old, in_process_old_text = bench_in_process(args.scrapes, "generate_latest")
    rows = [
        ("prometheus-node-exporter, same collectors as the agent", ne_same, ne_same_text),
        ("prometheus-node-exporter, no collectors (baseline)", ne_none, ne_none_text),
        ("prometheus-node-exporter, Debian defaults", ne_default, ne_default_text),
        ("netmon-agent /metrics, host enabled, no targets", agent, agent_text),
        ("netmon-agent /metrics, host disabled (baseline)", agent_none, agent_none_text),
        ("host collectors in-process (HostCollector.render)", in_process, in_process_text),
        ("host collectors in-process (families + text writer)", in_process_families, in_process_families_text),
        ("host collectors in-process (collect + generate_latest)", in_process_old, in_process_old_text),
    ]
    print(f"{args.scrapes} scrapes each, {os.cpu_count()} CPUs, one run")
    print(f"{'':56s} {'node_* series':>13s} {'all series':>10s} {'CPU/scrape':>11s}")
    for name, cpu, text in rows:
        print(f"{name:56s} {series(text, 'node_'):13d} {series(text):10d} {cpu * 1000:8.2f} ms")
    our_series, their_series = series(agent_text, "node_"), series(ne_same_text, "node_")
    ours, theirs = agent - agent_none, ne_same - ne_none
    print(
        f"host collectors alone (minus each server's baseline): agent {ours * 1000:.2f} ms for {our_series} series, "
        f"node_exporter {theirs * 1000:.2f} ms for {their_series} series"
    )
    print(idle.ratio_line("host collectors alone, agent / node_exporter per scrape", ours / theirs, load))
    per_series = (ours / our_series) / (theirs / their_series)
    print(idle.ratio_line("host collectors alone, agent / node_exporter per series", per_series, load))
    print(idle.ratio_line("agent / node_exporter, whole scrape with the same collectors", agent / ne_same, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
