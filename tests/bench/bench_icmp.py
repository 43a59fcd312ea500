"""CPU per ICMP echo and peak memory: netmon-agent vs prometheus-blackbox-exporter vs fping, at the same echo rate.

    cd /work/main && .venv/bin/python tests/bench/bench_icmp.py [--targets 1000] [--duration 120]

Needs root (raw ICMP sockets for blackbox_exporter and fping; the agent too, as ping_group_range is off here).
Targets are loopback addresses (127.1.0.1 onwards), so the kernel answers every echo at once; each tool sends
targets x 5 echoes every 10 s (500 echoes/s by default) for --duration seconds:

- the agent runs its scheduler (`netmon-agent run`): one icmp module, count 5, packet_interval 1s, every
  target every 10 s. Its CPU (utime + stime from /proc/PID/stat) and its echoes (the sum of
  probe_icmp_packets_sent_total on /metrics) are read after a warm-up in which every target has run
  once, and again --duration seconds later; /metrics is scraped outside that window.
- blackbox_exporter sends one echo per /probe request; this script drives those requests at the same rate
  from a bounded pool of keep-alive connections (the client's own CPU is not counted).
- fping pings every target once per 2 s, 2 ms apart (`-p 2000 -i 2`), for duration / 2 rounds;
  its CPU and peak RSS come from its rusage.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.bench import idle  # noqa: E402
from tests.bench.bench_host import process_cpu_seconds  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import running, wait_for_port  # noqa: E402
from tests.support.require import require_binary  # noqa: E402

ECHOES_PER_ROUND = 5
ROUND_INTERVAL_SECONDS = 10
AGENT_WARMUP_SECONDS = ROUND_INTERVAL_SECONDS + 5  # every target has started its first round
BLACKBOX_CONNECTIONS = 64
REQUEST_TIMEOUT_SECONDS = 10.0
ON_TIME_BOUNDS = ("0.01", "0.1")  # scheduling-lag histogram buckets reported as "on time"

AGENT_CONFIG_HEAD = """\
agent: {{id: bench, agency: bench}}
defaults: {{interval: {interval}s, timeout: 9s}}
max_concurrent_probes: {max_concurrent}
modules:
  ping:
    prober: icmp
    icmp: {{count: {count}, packet_interval: 1s}}
targets:
"""
BLACKBOX_CONFIG = """\
modules:
  icmp:
    prober: icmp
    timeout: 5s
    icmp:
      preferred_ip_protocol: ip4
"""


@dataclass
class Figure:
    label: str
    echoes: int
    cpu_seconds: float
    peak_rss_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_per_echo_ms(self) -> float:
        return self.cpu_seconds / self.echoes * 1000 if self.echoes else float("nan")


def loopback_targets(count: int) -> list[str]:
    first = ipaddress.ip_address("127.1.0.1")
    return [str(first + n) for n in range(count)]


def memory_bytes(pid: int, field: str = "VmHWM") -> int:
    """A memory figure from /proc/PID/status: VmHWM (peak RSS) or VmRSS (now)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


# --- netmon agent -----------------------------------------------------------------------------------------------


def agent_config(targets: list[str]) -> str:
    head = AGENT_CONFIG_HEAD.format(
        interval=ROUND_INTERVAL_SECONDS, count=ECHOES_PER_ROUND, max_concurrent=2 * len(targets)
    )
    return head + "".join(f"  - {{name: t{n}, address: {ip}, module: ping}}\n" for n, ip in enumerate(targets))


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(value for sample_labels, value in samples.get(name, []) if labels.items() <= sample_labels.items())


def bench_agent(targets: list[str], duration: float, workdir: Path) -> Figure:
    config = workdir / "agent.yml"
    config.write_text(agent_config(targets))
    port = free_port()
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with running(argv, log_path=str(workdir / "agent.log"), cwd=ROOT) as agent:
        wait_for_port("127.0.0.1", port, timeout=30, proc=agent)
        time.sleep(AGENT_WARMUP_SECONDS)
        rss_unscraped = memory_bytes(agent.pid, "VmRSS")
        before = scrape(port)
        cpu_before = process_cpu_seconds(agent.pid)
        time.sleep(duration)
        cpu_after = process_cpu_seconds(agent.pid)
        after = scrape(port)
        rss = memory_bytes(agent.pid)
    delta = {name: total(after, name) - total(before, name) for name in (
        "probe_icmp_packets_sent_total", "probe_icmp_packets_received_total",
        "netmon_agent_scheduling_lag_seconds_count", "netmon_agent_probe_overruns_total",
    )}  # fmt: skip
    runs = delta["netmon_agent_scheduling_lag_seconds_count"]
    on_time = [
        total(after, "netmon_agent_scheduling_lag_seconds_bucket", le=bound)
        - total(before, "netmon_agent_scheduling_lag_seconds_bucket", le=bound)
        for bound in ON_TIME_BOUNDS
    ]
    finished = {
        outcome: total(after, "netmon_agent_probe_runs_total", result=outcome)
        - total(before, "netmon_agent_probe_runs_total", result=outcome)
        for outcome in ("success", "failure")
    }
    notes = [
        f"probe runs started {runs:.0f}: within {float(ON_TIME_BOUNDS[0]) * 1000:g} ms of schedule "
        f"{_share(on_time[0], runs)}, within {float(ON_TIME_BOUNDS[1]) * 1000:g} ms {_share(on_time[1], runs)}; "
        f"overruns {delta['netmon_agent_probe_overruns_total']:.0f}; "
        f"finished runs successful {_share(finished['success'], sum(finished.values()))}",
        f"echo replies {_share(delta['probe_icmp_packets_received_total'], delta['probe_icmp_packets_sent_total'])}; "
        f"RSS after the warm-up, before the first /metrics scrape {rss_unscraped / 2**20:.1f} MB",
    ]
    return Figure("netmon-agent", int(delta["probe_icmp_packets_sent_total"]), cpu_after - cpu_before, rss, notes)


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


# --- blackbox_exporter ------------------------------------------------------------------------------------------


@dataclass
class DriveStats:
    sent: int = 0
    answered: int = 0
    succeeded: int = 0
    failed_requests: int = 0


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length:
        return await reader.readexactly(int(length.group(1)))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


async def _worker(port: int, queue: asyncio.Queue[str | None], stats: DriveStats) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (target := await queue.get()) is not None:
            request = f"GET /probe?module=icmp&target={target} HTTP/1.1\r\nHost: bench\r\n\r\n"
            writer.write(request.encode())
            try:
                body = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_SECONDS)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                stats.failed_requests += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            stats.answered += 1
            stats.succeeded += b"\nprobe_success 1" in body
    finally:
        writer.close()


async def drive_blackbox(port: int, targets: list[str], rate: float, duration: float) -> DriveStats:
    """Request /probe `rate` times a second for `duration` seconds, round-robin over targets."""
    stats = DriveStats()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=BLACKBOX_CONNECTIONS)
    workers = [asyncio.create_task(_worker(port, queue, stats)) for _ in range(BLACKBOX_CONNECTIONS)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (elapsed := loop.time() - started) < duration:
        due = int(elapsed * rate)
        while stats.sent < due:
            await queue.put(targets[stats.sent % len(targets)])
            stats.sent += 1
        await asyncio.sleep(0.01)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    return stats


def bench_blackbox(targets: list[str], duration: float, workdir: Path) -> Figure:
    binary = require_binary("prometheus-blackbox-exporter")
    config = workdir / "blackbox.yml"
    config.write_text(BLACKBOX_CONFIG)
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    with running(argv, log_path=str(workdir / "blackbox.log")) as exporter:
        wait_for_port("127.0.0.1", port, proc=exporter)
        rate = len(targets) * ECHOES_PER_ROUND / ROUND_INTERVAL_SECONDS
        cpu_before = process_cpu_seconds(exporter.pid)
        stats = asyncio.run(drive_blackbox(port, targets, rate, duration))
        cpu = process_cpu_seconds(exporter.pid) - cpu_before
        rss = memory_bytes(exporter.pid)
    notes = [
        f"requests {stats.sent} ({stats.sent / duration:.0f}/s asked), answered {stats.answered}, "
        f"probe_success 1 in {_share(stats.succeeded, stats.answered)}, failed requests {stats.failed_requests}"
    ]
    return Figure("prometheus-blackbox-exporter", stats.answered, cpu, rss, notes)


# --- fping ------------------------------------------------------------------------------------------------------


def fping_argv(binary: str, targets: list[str], duration: float) -> list[str]:
    period_ms = ROUND_INTERVAL_SECONDS * 1000 // ECHOES_PER_ROUND  # each target: 5 echoes per 10 s
    gap_ms = period_ms / len(targets)  # one sweep over all targets per period
    rounds = max(int(duration * 1000 // period_ms), 1)
    return [binary, "-q", "-c", str(rounds), "-p", str(period_ms), "-i", f"{gap_ms:g}", *targets]


def bench_fping(targets: list[str], duration: float, workdir: Path) -> Figure:
    argv = fping_argv(require_binary("fping"), targets, duration)
    with open(workdir / "fping.log", "wb") as summary:
        started = time.monotonic()
        fping = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=summary)
        peak_rss = _watch_peak_rss(fping)
        _, status, usage = os.wait4(fping.pid, 0)
        wall = time.monotonic() - started
    sent = received = 0
    for line in (workdir / "fping.log").read_text().splitlines():
        counts = re.search(r"xmt/rcv/%loss = (\d+)/(\d+)/", line)
        if counts:
            sent += int(counts.group(1))
            received += int(counts.group(2))
    notes = [f"{' '.join(argv[:8])} ... ({len(targets)} targets), exit status {os.waitstatus_to_exitcode(status)}, "
             f"wall {wall:.1f} s, echo replies {_share(received, sent)}"]  # fmt: skip
    return Figure("fping", sent, usage.ru_utime + usage.ru_stime, peak_rss, notes)


def _watch_peak_rss(process: subprocess.Popen) -> int:
    """VmHWM read until the process exits: its rusage ru_maxrss would include this (forking) Python's RSS,
    which Linux carries over exec."""
    peak = 0
    while True:
        try:
            peak = max(peak, memory_bytes(process.pid))
        except OSError:
            return peak
        if _exited(process.pid):
            return peak
        time.sleep(0.5)


def _exited(pid: int) -> bool:
    status = Path(f"/proc/{pid}/stat").read_text()
    return status.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie: exited, not yet reaped


# --- report -----------------------------------------------------------------------------------------------------


def report(figures: list[Figure], targets: int, duration: float, load: float) -> str:
    rate = targets * ECHOES_PER_ROUND / ROUND_INTERVAL_SECONDS
    lines = [
        f"{targets} targets x {ECHOES_PER_ROUND} echoes every {ROUND_INTERVAL_SECONDS} s ({rate:g} echoes/s), "
        f"{duration:g} s measured, {os.cpu_count()} CPUs",
        f"{'':30} {'echoes':>8} {'CPU s':>8} {'CPU/echo':>10} {'peak RSS':>10}",
    ]
    for figure in figures:
        lines.append(
            f"{figure.label:30} {figure.echoes:>8} {figure.cpu_seconds:>8.2f} "
            f"{figure.cpu_per_echo_ms:>7.4f} ms {figure.peak_rss_bytes / 2**20:>7.1f} MB"
        )
    for figure in figures:
        lines += [f"{figure.label}: {note}" for note in figure.notes]
    by_label = {figure.label: figure for figure in figures}
    agent = by_label.get("netmon-agent")
    for other in ("fping", "prometheus-blackbox-exporter"):
        if agent is not None and other in by_label:
            ratio = agent.cpu_per_echo_ms / by_label[other].cpu_per_echo_ms
            lines.append(idle.ratio_line(f"CPU per echo, agent / {other}", ratio, load))
    return "\n".join(lines)


BENCHES = {"agent": bench_agent, "blackbox": bench_blackbox, "fping": bench_fping}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000, help="loopback addresses to ping (default 1000)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds measured per tool (default 120)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: blackbox_exporter and fping need raw ICMP sockets", file=sys.stderr)
        return 2
    load = idle.start()
    targets = loopback_targets(args.targets)
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-icmp-") as workdir:
        for name in args.only.split(","):
            print(f"running {name} for {args.duration:g} s ...", file=sys.stderr, flush=True)
            figures.append(BENCHES[name](targets, args.duration, Path(workdir)))
    print(report(figures, args.targets, args.duration, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
