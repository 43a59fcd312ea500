"""The collector between real peers: Prometheus scrapes it (honor_labels), Prometheus in agent mode remote-writes
node-exporter data into it, and it remote-writes into VictoriaMetrics and Prometheus (stale markers included)."""

from __future__ import annotations

import math
import time

from foundation import remote_write as rw
from foundation.remote_write import make_series
from tests.support.httpd import HttpServer, Reply
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary
from tests.support.tsdb import query_prometheus, running_prometheus, running_victoria_metrics, victoria_metrics_export
from tests.test_agent_run import metric_value
from tests.test_collector import TOKENS, now_ms, push, running_collector, series_lines, wait_until

IDENTITY = {"agency": "so-tttt", "agent": "so-tttt-1", "district": "tp-my-tho", "level": "department"}


def test_prometheus_scrapes_the_collector_with_honor_labels_and_finds_identity_labels(tmp_path):
    with running_collector(tmp_path / "collector") as collector:
        spoof = {"agency": "xa-my-tho", "target": "dc", "module": "icmp", "job": "netmon-agent", "instance": "agent-lan-1"}
        assert push(collector.url, rw.encode([make_series("probe_success", spoof, [(now_ms(), 1.0)])]), TOKENS["so-tttt-1"])[0] == 204
        config = (
            "global: {scrape_interval: 1s}\n"
            f"scrape_configs: [{{job_name: netmon-collector, honor_labels: true, static_configs: [{{targets: ['127.0.0.1:{collector.port}']}}]}}]\n"
        )
        with running_prometheus(tmp_path / "prometheus", config=config) as prometheus:
            wait_until(lambda: query_prometheus(prometheus, "probe_success"), 20, "prometheus to scrape the collector")
            found = query_prometheus(prometheus, "probe_success")
            agency_info = query_prometheus(prometheus, 'netmon_agency_info{agency="so-tttt"}')
            up = query_prometheus(prometheus, 'netmon_agent_up{agent="xa-my-tho-1"}')
    assert len(found) == 1
    labels = found[0]["metric"]
    assert {key: labels[key] for key in IDENTITY} == IDENTITY
    assert (labels["job"], labels["instance"]) == ("netmon-agent", "agent-lan-1")  # honor_labels keeps the agent's
    assert agency_info[0]["metric"]["name"] == "Sở Thông tin và Truyền thông"
    assert up[0]["value"][1] == "0"  # never seen


def agent_mode_config(job: str, target_port: int, collector_url: str) -> str:
    """Prometheus in agent mode scraping one target every second and remote-writing to the collector as cai-be-1."""
    return (
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: {job}, static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]}}]\n"
        f"remote_write: [{{url: '{collector_url}/api/v1/write', authorization: {{credentials: {TOKENS['cai-be-1']}}},"
        " queue_config: {batch_send_deadline: 1s}}]\n"
    )


def test_prometheus_agent_mode_remote_writes_node_exporter_data_into_the_collector(tmp_path):
    node_exporter = require_binary("prometheus-node-exporter")
    node_port = free_port()
    node_argv = [node_exporter, f"--web.listen-address=127.0.0.1:{node_port}", "--collector.disable-defaults", "--collector.cpu",
                 "--collector.meminfo", "--collector.loadavg", "--collector.uname"]
    with running_collector(tmp_path / "collector") as collector, running(node_argv, log_path=str(tmp_path / "node.log")) as node:
        wait_for_port("127.0.0.1", node_port, proc=node)
        config = agent_mode_config("node", node_port, collector.url)
        with running_prometheus(tmp_path / "prometheus", config=config, agent_mode=True) as prometheus:
            wait_until(lambda: series_lines(collector.metrics(), "node_load1"), 30, "node-exporter data via prometheus agent")
            text = collector.metrics()
            prometheus_log = prometheus.log.read_text()
    load = [line for line in series_lines(text, "node_load1")]
    assert len(load) == 1
    assert 'agency="ubnd-cai-be",agent="cai-be-1",district="cai-be"' in load[0] and 'job="node"' in load[0]
    assert metric_value(text, "node_memory_MemTotal_bytes", agent="cai-be-1") > 0
    assert metric_value(text, "netmon_agent_up", agent="cai-be-1") == 1.0
    assert metric_value(text, "netmon_collector_samples_received_total", mode="push") > 50
    # "status 401", not a bare "401": the log's durations (e.g. 5.0818640123s) contain those digits
    assert "non_finite" not in prometheus_log and "status 401" not in prometheus_log


def remote_write_out(url: str, queue: str) -> str:
    return (
        f"  - url: {url}\n    queue: {{directory: {queue}, fsync_interval: 200ms}}\n"
        "    interval: 500ms\n    min_backoff: 200ms\n    max_backoff: 1s\n"
    )


def test_collector_remote_writes_into_victoria_metrics_and_prometheus_with_stale_markers(tmp_path):
    with running_victoria_metrics(tmp_path / "vm") as vm, running_prometheus(tmp_path / "prometheus") as prometheus:
        extra = (
            "defaults: {interval: 1s, ttl: 2s}\nexternal_labels: {province: tien-giang}\nremote_write:\n"
            + remote_write_out(f"{vm.url}/api/v1/write", str(tmp_path / "q-vm"))
            + remote_write_out(f"{prometheus.url}/api/v1/write", str(tmp_path / "q-prom"))
        )
        start = now_ms() - 30_000
        samples = [(start + i * 5_000, float(i)) for i in range(5)]
        with running_collector(tmp_path / "collector", extra) as collector:
            body = rw.encode([make_series("netmon_test_forwarded", {"target": "dc"}, samples)])
            assert push(collector.url, body, TOKENS["so-tttt-1"])[0] == 204
            wait_until(lambda: metric_value(collector.metrics(), "netmon_collector_remote_write_queue_pending_samples") == 0
                       and metric_value(collector.metrics(), "netmon_agent_up", agent="so-tttt-1") == 0.0, 15, "forwarding and expiry")
            time.sleep(1.5)  # the stale markers of the expiry travel too
            wait_until(lambda: all(metric_value(collector.metrics(), "netmon_collector_remote_write_queue_pending_samples", remote=name) == 0
                                   for name in (f"127.0.0.1:{vm.port}", f"127.0.0.1:{prometheus.port}")), 10, "stale markers sent")
            text = collector.metrics()
        exported = victoria_metrics_export(vm, "netmon_test_forwarded")
        stored = query_prometheus(prometheus, "netmon_test_forwarded[10m]")
        after_expiry = query_prometheus(prometheus, "netmon_test_forwarded", at=time.time())
    expected_labels = tuple(sorted({"__name__": "netmon_test_forwarded", "target": "dc", "province": "tien-giang", **IDENTITY}.items()))
    assert list(exported) == [expected_labels]
    assert [sample for sample in exported[expected_labels] if sample[1] == sample[1]][:5] == samples
    assert len(stored) == 1 and {k: v for k, v in stored[0]["metric"].items()} == dict(expected_labels)
    assert [(round(float(t) * 1000), float(v)) for t, v in stored[0]["values"]] == samples
    assert after_expiry == [], "the expiry's stale marker should end the series in Prometheus"
    assert metric_value(text, "netmon_collector_remote_write_samples_sent_total", remote=f"127.0.0.1:{vm.port}") >= 6


EXPORTER_PAGE = b"""\
# TYPE netmon_test_latency_seconds summary
netmon_test_latency_seconds{quantile="0.5"} NaN
netmon_test_latency_seconds_sum 0
netmon_test_latency_seconds_count 0
# TYPE netmon_test_bound gauge
netmon_test_bound{side="upper"} +Inf
netmon_test_bound{side="lower"} -Inf
"""
SPECIAL = {'netmon_test_latency_seconds{quantile="0.5"}': "NaN", 'netmon_test_bound{side="upper"}': "+Inf", 'netmon_test_bound{side="lower"}': "-Inf"}


def special_values(text: str) -> dict[str, str]:
    """The values the collector shows for the exporter's NaN and ±Inf series, by name and their own label."""
    found = {}
    for line in text.splitlines():
        for key in SPECIAL:
            name, own_label = key.split("{")
            if line.startswith(name + "{") and own_label[:-1] in line:
                found[key] = line.rsplit(" ", 1)[1]
    return found


def test_nan_and_infinities_from_prometheus_agent_mode_are_stored_and_forwarded_unchanged(tmp_path):
    """An exporter's NaN and ±Inf, scraped by Prometheus in agent mode and remote-written to the collector: answered
    204 (a 400 would make Prometheus drop the whole batch), shown as Prometheus shows them, and forwarded with the
    same values to a Prometheus remote_write receiver (VictoriaMetrics keeps ±Inf and, by its own rule, skips NaN)."""
    with HttpServer(routes={"/metrics": Reply(body=EXPORTER_PAGE, headers=(("Content-Type", "text/plain; version=0.0.4"),))}) as exporter, \
            running_victoria_metrics(tmp_path / "vm") as vm, running_prometheus(tmp_path / "receiver") as receiver:
        extra = "remote_write:\n" + remote_write_out(f"{vm.url}/api/v1/write", str(tmp_path / "q-vm")) + remote_write_out(
            f"{receiver.url}/api/v1/write", str(tmp_path / "q-prom"))
        with running_collector(tmp_path / "collector", extra) as collector:
            config = agent_mode_config("exporter", exporter.port, collector.url)
            with running_prometheus(tmp_path / "agent", config=config, agent_mode=True) as agent:
                wait_until(lambda: len(special_values(collector.metrics())) == 3, 30, "the exporter's series via prometheus agent")
                wait_until(lambda: len(query_prometheus(receiver, '{__name__=~"netmon_test_bound|netmon_test_latency_seconds"}')) == 3,
                           20, "the series forwarded to the receiver")
                wait_until(lambda: len(victoria_metrics_export(vm, "netmon_test_bound")) == 2, 20, "the series forwarded to VictoriaMetrics")
                text = collector.metrics()
                agent_log = agent.log.read_text()
            forwarded = {
                f'{series["metric"]["__name__"]}{{{"quantile" if "quantile" in series["metric"] else "side"}="'
                f'{series["metric"].get("quantile") or series["metric"].get("side")}"}}': series["value"][1]
                for series in query_prometheus(receiver, '{__name__=~"netmon_test_bound|netmon_test_latency_seconds"}')
            }
            in_vm = victoria_metrics_export(vm, '{__name__=~"netmon_test_bound|netmon_test_latency_seconds"}')
    assert special_values(text) == SPECIAL
    assert forwarded == SPECIAL
    assert metric_value(text, "netmon_collector_write_requests_total", code="204", reason="ok") > 0
    assert not [line for line in series_lines(text, "netmon_collector_write_requests_total") if 'code="204"' not in line]
    assert "status 400" not in agent_log and "non-recoverable" not in agent_log
    vm_values = {dict(key).get("side", "quantile"): {value for _, value in samples} for key, samples in in_vm.items()}
    assert vm_values == {"upper": {math.inf}, "lower": {-math.inf}}  # VictoriaMetrics stores no NaN but stale markers
