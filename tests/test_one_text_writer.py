"""Every family on /metrics goes through foundation/textformat.py, and says what prometheus_client's
generate_latest said of the same state: names, types, HELP, label sets and values (byte for byte where
prometheus_client's order is the writer's order: families collected from a registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.catalog import parse_config
from agents.exposition import ResultCollector, render_text, result_families
from agents.fleet import ConfigInfoCollector
from agents.host.collector import HostCollector
from agents.host.config import host_config
from agents.results import Metric, ProbeResult
from agents.selfmetrics import AgentMetrics
from agents.snmp.probe import REBOOTS, UPTIME
from agents.store import ResultStore
from foundation.textformat import format_value, render_families

CONFIG = parse_config(
    """\
agent: {id: a, agency: b, labels: {district: cai-be}}
modules: {tcp: {prober: tcp}}
host: {enabled: true}
targets:
  - {name: sw1, address: "127.0.0.1:1", module: tcp, labels: {site: "Ủy ban \\\\ \\"A\\""}}
  - {name: sw2, address: "127.0.0.1:2", module: tcp}
""",
    "x.yml",
)
COUNTERS = [Metric(f"if{n}", f"The total number of {n} - 1.3.6.1.2.1.31.1.1.1", "counter", cumulative=True)
            for n in ("HCInOctets", "HCOutOctets", "InErrors", "OutDiscards")]
GAUGES = [Metric(f"if{n}", f"{n}\nsecond line \\ backslash") for n in ("OperStatus", "HighSpeed", "LastChange")]
RTT = Metric("probe_test_rtt_seconds", "RTT", "histogram", buckets=(0.01, 0.1))


class Fixed:
    """Families collected once, so both writers see the same values (CPU seconds, host readings move)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


def parsed(text: str) -> dict:
    """family name -> (type, help, {(sample name, label set): value as text})"""
    return {
        family.name: (family.type, family.documentation,
                      {(s.name, tuple(sorted(s.labels.items()))): format_value(s.value) for s in family.samples})
        for family in text_string_to_metric_families(text)
    }


def device_result(interfaces: int, poll: int) -> ProbeResult:
    samples = []
    for index in range(1, interfaces + 1):
        labels = {"ifIndex": str(index), "ifName": f"ge-0/0/{index}", "ifAlias": f'uplink "{index}"\nto\\core'}
        samples += [metric(123456789.0 * index * poll, **labels) for metric in COUNTERS]
        samples += [metric(float(index % 3), **labels) for metric in GAUGES]
    samples += [UPTIME(86400.0 * 600), REBOOTS(1), GAUGES[1](float("nan"), ifIndex="0"), RTT.observe([0.005, 0.5])]
    samples.append(GAUGES[0](1, site="overridden"))  # a sample label wins over the target's
    return ProbeResult(True, samples=samples)


def snmp_store() -> ResultStore:
    store = ResultStore()
    for poll in (1, 2):
        store.record(CONFIG.targets[0], device_result(201, poll))
        store.record(CONFIG.targets[1], device_result(3, poll))
    return store


def test_snmp_device_series_render_the_families_generate_latest_rendered():
    store = snmp_store()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultCollector(store))
    new, old = render_text(store.states()), generate_latest(registry).decode()
    assert parsed(new) == parsed(old)
    assert len(parsed(new)["ifHCInOctets"][2]) == 204
    assert [line for line in new.splitlines() if line.startswith("#")] == [
        line for line in old.splitlines() if line.startswith("#")
    ]


def agent_registry() -> CollectorRegistry:
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    metrics = AgentMetrics(registry)
    metrics.apply_config(CONFIG)
    metrics.runs.labels("sw1", "tcp", "success").inc(3)
    metrics.failures.labels('odd "target"\n', "tcp", "timeout").inc()
    metrics.lag.observe(0.02)
    metrics.reload_time.set(1765012345.678)
    registry.register(HostCollector(lambda: host_config(CONFIG)))
    registry.register(ConfigInfoCollector(lambda: ("abc123", None, None)))
    Counter("netmon_agent_path_traces_triggered", "Path traces", ["target", "parent"], registry=registry).labels("p", "t").inc()
    return registry


def test_self_and_host_metrics_are_the_bytes_generate_latest_wrote():
    families = list(agent_registry().collect())
    new = "".join(render_families(families))
    assert new.encode() == generate_latest(Fixed(families))
    names = parsed(new)
    assert {"node_cpu_seconds", "node_scrape_collector_success", "process_cpu_seconds", "netmon_agent_probe_runs",
            "netmon_agent_scheduling_lag_seconds", "netmon_agent_config_info"} <= names.keys()


def test_a_probe_result_alone_is_the_bytes_generate_latest_wrote():
    families = result_families(device_result(2, 1))
    assert "".join(render_families(families)).encode() == generate_latest(Fixed(families))


def test_openmetrics_only_samples_are_written_as_generate_latest_writes_them():
    from prometheus_client.core import CounterMetricFamily, InfoMetricFamily

    counter = CounterMetricFamily("jobs", "Jobs done", labels=["queue"], created=1765012345.0)
    counter.add_metric(["a"], 3.0, created=1765012345.0)
    info = InfoMetricFamily("build", "Build", value={"version": "1"})
    families = [counter, info]
    assert "".join(render_families(families)).encode() == generate_latest(Fixed(families))


def test_values_are_written_as_go_and_prometheus_client_write_them():
    from prometheus_client.utils import floatToGoString

    values = [0.0, -0.0, 1.0, -2.5, 999999.0, 1e6, 1234567.0, 1765012345.678, 1e15, 1e16, 1.5e17, -1e7,
              float("inf"), float("-inf"), float("nan"), 1e-7, 2.0**64]
    assert [format_value(v) for v in values] == [floatToGoString(v) for v in values]
