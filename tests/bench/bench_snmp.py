"""CPU and wall time per poll of a 201-interface device: netmon-agent vs prometheus-snmp-exporter vs snmpbulkwalk.

    cd /work/main && .venv/bin/python tests/bench/bench_snmp.py [--polls 50]

Needs root: net-snmp's snmpd runs in a fresh network namespace holding 100 veth pairs (201 interfaces with
lo), and this script runs its measurements from a thread inside that namespace, so every tool talks to the
same agent over the namespace's loopback. All three read the same data: the built-in `if_mib` profile
(12 metric columns, ifType, and the ifAlias/ifDescr/ifName lookups, plus sysUpTime and ifNumber).

- snmp_exporter 0.21 gets a hand-written numeric-OID snmp.yml generated from that profile (Debian ships no
  generator MIBs); CPU is its process's utime + stime from /proc/PID/stat around the scrapes.
- The agent's prober runs in this process (time.process_time): "steady" polls use its caches (labels and
  slow columns re-walked on their own cadence), "full" polls walk every column every time as snmp_exporter
  does, and "+ exposition" adds rendering the device's series as /metrics does; "exposition only" renders one
  poll's series polls x 5 times, through prometheus_client's generate_latest and through /metrics' writer.
- snmpbulkwalk walks one column per invocation (it takes one OID), snmpget reads the two scalars; CPU is
  this process's children's rusage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from agents.catalog import parse_config  # noqa: E402
from agents.config.model import Target  # noqa: E402
from agents.exposition import ResultCollector, render_text  # noqa: E402
from agents.resources import ProbeResources  # noqa: E402
from agents.runner import run_target  # noqa: E402
from agents.snmp.schema import MetricSpec, Profile, TableSpec, load_builtin_profiles  # noqa: E402
from agents.store import ResultStore  # noqa: E402
from tests.bench import idle  # noqa: E402
from tests.bench.bench_host import process_cpu_seconds, series  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import running, wait_for_port  # noqa: E402
from tests.support.require import require_binary  # noqa: E402
from tests.support.snmpd import Snmpd, call_in_netns, snmpd_with_interfaces  # noqa: E402

WARMUP = 3
AGENT_CONFIG = """\
agent: {{id: bench, agency: bench}}
snmp_auths:
  v2: {{version: 2c, community: "${{BENCH_COMMUNITY}}"}}
  v3: {{version: 3, username: {user}, auth_password: "${{BENCH_AUTH}}", priv_password: "${{BENCH_PRIV}}"}}
snmp_devices:
  - {{name: v2c, address: {host}, port: {port}, auth: v2, profiles: [if_mib], interval: 60s}}
  - {{name: v3, address: {host}, port: {port}, auth: v3, profiles: [if_mib], interval: 60s}}
"""


@dataclass
class Figure:
    label: str
    cpu: float  # seconds per poll
    wall: float
    series: int | str


# --- snmp_exporter -----------------------------------------------------------------------------------------------


def walked_metrics(table: TableSpec) -> list[MetricSpec]:
    """The columns the agent walks on this device (it has ifXTable): the 32-bit fallbacks are left out."""
    return [spec for spec in table.metrics if spec.fallback_for is None]


def exporter_module(profile: Profile, auth: dict) -> dict:
    """snmp_exporter 0.21's module for the same data: every column walked, lookups as labels, auth inside."""
    table = profile.tables[0]
    indexes = [{"labelname": index.name, "type": "gauge"} for index in table.index]
    lookups = [{"labels": [table.index[0].name], "labelname": lookup.name, "oid": lookup.oid, "type": "DisplayString"}
               for lookup in table.lookups]
    metrics = [{"name": scalar.name, "oid": scalar.oid.removesuffix(".0"), "type": "gauge", "help": scalar.help}
               for scalar in profile.scalars]
    for spec in walked_metrics(table):
        metric = {"name": spec.name, "oid": spec.oid, "type": "EnumAsInfo" if spec.type == "enum_info" else spec.type,
                  "help": spec.help, "indexes": indexes, "lookups": lookups}
        if spec.enum:
            metric["enum_values"] = {int(key): value for key, value in spec.enum.items()}
        metrics.append(metric)
    walk = [spec.oid for spec in walked_metrics(table)] + [lookup.oid for lookup in table.lookups]
    return {"walk": walk, "get": [scalar.oid for scalar in profile.scalars], "metrics": metrics,
            "max_repetitions": 25, "timeout": "5s", "retries": 3, **auth}


def snmp_yml(server: Snmpd) -> str:
    profile = load_builtin_profiles()["if_mib"]
    v2c = {"version": 2, "auth": {"community": server.community}}
    v3 = {"version": 3, "auth": {"security_level": "authPriv", "username": server.user, "password": server.auth_password,
                                 "auth_protocol": "SHA", "priv_protocol": "AES", "priv_password": server.priv_password}}
    return yaml.safe_dump({"if_mib": exporter_module(profile, v2c), "if_mib_v3": exporter_module(profile, v3)})


def bench_exporter(server: Snmpd, directory: Path, polls: int) -> list[Figure]:
    config = directory / "snmp.yml"
    config.write_text(snmp_yml(server))
    port = free_port()
    argv = [require_binary("prometheus-snmp-exporter"), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    figures = []
    with running(argv, log_path=str(directory / "snmp_exporter.log")) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        for module in ("if_mib", "if_mib_v3"):
            url = f"http://127.0.0.1:{port}/snmp?target={server.address}&module={module}"
            for _ in range(WARMUP):
                urllib.request.urlopen(url, timeout=30).read()
            cpu_before, started = process_cpu_seconds(proc.pid), time.perf_counter()
            for _ in range(polls):
                body = urllib.request.urlopen(url, timeout=30).read().decode()
            wall = (time.perf_counter() - started) / polls
            cpu = (process_cpu_seconds(proc.pid) - cpu_before) / polls
            if "ifHCInOctets{" not in body:
                raise RuntimeError(f"snmp_exporter returned no interface data for {module}:\n{body[:2000]}")
            label = "prometheus-snmp-exporter 0.21" + (" (v3 SHA/AES)" if module.endswith("v3") else " (v2c)")
            figures.append(Figure(label, cpu, wall, series(body) - series(body, "snmp_scrape")))
    return figures


# --- netmon-agent ------------------------------------------------------------------------------------------------


def agent_targets(server: Snmpd) -> dict[str, Target]:
    os.environ.update(BENCH_COMMUNITY=server.community, BENCH_AUTH=server.auth_password, BENCH_PRIV=server.priv_password)
    config = parse_config(AGENT_CONFIG.format(user=server.user, host=server.host, port=server.port))
    return {target.name: target for target in config.targets}


def without_caches(target: Target) -> Target:
    """The same device with labels and slow columns walked on every poll, as snmp_exporter walks them."""
    settings = msgspec.structs.replace(target.module.settings, label_refresh=0.0, slow_refresh=0.0)
    module = dataclasses.replace(target.module, settings=settings)
    return dataclasses.replace(target, name=f"{target.name}-full", module=module)


async def poll_figure(label: str, target: Target, resources: ProbeResources, polls: int, expose: bool) -> Figure:
    store = ResultStore()
    body = ""
    for _ in range(WARMUP):
        await run_target(target, resources)
    cpu_before, started = time.process_time(), time.perf_counter()
    for _ in range(polls):
        result = await run_target(target, resources)
        if not result.success:
            raise RuntimeError(f"{label}: poll failed: {result.detail}")
        if expose:
            store.record(target, result)
            body = render_text(store.states())  # what /metrics writes
    cpu, wall = (time.process_time() - cpu_before) / polls, (time.perf_counter() - started) / polls
    count = series(body) if expose else sum(1 for s in result.samples if not s.metric.name.startswith("probe_"))
    return Figure(label, cpu, wall, count)


async def exposition_figures(target: Target, resources: ProbeResources, renders: int) -> list[Figure]:
    """The device's series rendered alone, many times: prometheus_client's generate_latest (how /metrics wrote them
    before issue 18) and the direct writer /metrics uses now."""
    store = ResultStore()
    store.record(target, await run_target(target, resources))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultCollector(store))
    figures = []
    for label, render in (("generate_latest (before)", lambda: generate_latest(registry).decode()),
                          ("render_text (/metrics now)", lambda: render_text(store.states()))):
        body = render()
        cpu_before, started = time.process_time(), time.perf_counter()
        for _ in range(renders):
            render()
        figures.append(Figure(f"exposition only, {label}", (time.process_time() - cpu_before) / renders,
                              (time.perf_counter() - started) / renders, series(body)))
    return figures


async def bench_agent(server: Snmpd, polls: int) -> list[Figure]:
    targets = agent_targets(server)
    resources = ProbeResources()
    try:
        return [
            await poll_figure("netmon-agent (v2c), steady: cached labels", targets["v2c"], resources, polls, False),
            await poll_figure("netmon-agent (v2c), steady + exposition", targets["v2c"], resources, polls, True),
            *await exposition_figures(targets["v2c"], resources, polls * 5),
            await poll_figure("netmon-agent (v2c), full walk every poll", without_caches(targets["v2c"]), resources, polls, False),
            await poll_figure("netmon-agent (v3 SHA/AES), steady: cached labels", targets["v3"], resources, polls, False),
            await poll_figure("netmon-agent (v3 SHA/AES), full walk every poll", without_caches(targets["v3"]), resources,
                              polls, False),
        ]
    finally:
        resources.close()


# --- snmpbulkwalk ------------------------------------------------------------------------------------------------


def bench_snmpbulkwalk(server: Snmpd, polls: int) -> Figure:
    profile = load_builtin_profiles()["if_mib"]
    table = profile.tables[0]
    columns = [spec.oid for spec in walked_metrics(table)] + [lookup.oid for lookup in table.lookups]
    env = {**os.environ, "MIBS": ""}
    auth = ["-v2c", "-c", server.community, "-On", "-Cr25", server.address]
    commands = [[require_binary("snmpbulkwalk", "snmp"), *auth, column] for column in columns]
    commands.append([require_binary("snmpget", "snmp"), *auth[:4], server.address, *(s.oid for s in profile.scalars)])
    lines = 0
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    for _ in range(polls):
        lines = sum(len(subprocess.run(argv, capture_output=True, check=True, env=env, timeout=30).stdout.splitlines())
                    for argv in commands)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / polls
    return Figure(f"snmpbulkwalk, {len(columns)} columns + snmpget (v2c)", cpu, (time.perf_counter() - started) / polls,
                  f"{lines} values")


# --- report ------------------------------------------------------------------------------------------------------


def report(figures: list[Figure], polls: int, load: float) -> str:
    by_label = {figure.label: figure for figure in figures}
    rows = [f"{polls} polls of a 201-interface net-snmp agent (snmpbulkwalk: {max(polls // 5, 5)}), 2 CPUs, one run",
            f"{'':58} {'CPU/poll':>10} {'wall/poll':>10}  series"]
    rows += [f"{f.label:58} {f.cpu * 1000:8.2f} ms {f.wall * 1000:8.2f} ms  {f.series}" for f in figures]
    exporter = by_label["prometheus-snmp-exporter 0.21 (v2c)"]
    exporter_v3 = by_label["prometheus-snmp-exporter 0.21 (v3 SHA/AES)"]
    rows.append("CPU ratios (lower is better for the agent):")
    for label, figure in by_label.items():
        if label.startswith("netmon-agent") or label.startswith("snmpbulkwalk"):
            reference = exporter_v3 if "v3" in label else exporter
            rows.append(idle.ratio_line(f"  {label:56} / snmp_exporter", figure.cpu / reference.cpu, load))
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_snmp needs root (network namespace with 100 veth pairs)", file=sys.stderr)
        return 1
    load = idle.start()
    with tempfile.TemporaryDirectory(prefix="bench-snmp-") as tmp, snmpd_with_interfaces(Path(tmp)) as server:

        def measure() -> list[Figure]:
            figures = bench_exporter(server, Path(tmp), args.polls)
            figures += asyncio.run(bench_agent(server, args.polls))
            figures.append(bench_snmpbulkwalk(server, max(args.polls // 5, 5)))
            return figures

        print(f"load average at the end: {' '.join(f'{one:.2f}' for one in os.getloadavg())}")
        print(report(call_in_netns(server.ns, measure), args.polls, load))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
