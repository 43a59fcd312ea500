"""The agent as a user runs it: `netmon-agent run` in its own process, read over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary

ROOT = Path(__file__).resolve().parent.parent


def agent_config(port: int, closed_port: int, extra_targets: str = "") -> str:
    return f"""\
agent:
  id: test-agent
  agency: so-tttt
  name: "Sở Thông tin và Truyền thông"
  labels: {{district: tp-my-tho, level: department}}
listen: 127.0.0.1:{port}
defaults: {{interval: 1s, timeout: 500ms}}
modules:
  tcp_connect: {{prober: tcp}}
  must_be_closed: {{prober: tcp, tcp: {{must_be_closed: true}}}}
targets:
  - {{name: self-port, address: "127.0.0.1:{port}", module: tcp_connect}}
  - {{name: telnet-policy, address: "127.0.0.1:{closed_port}", module: must_be_closed}}
  - {{name: refused, address: "127.0.0.1:{closed_port}", module: tcp_connect, labels: {{role: "máy chủ"}}}}
{extra_targets}"""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def metric_value(text: str, metric: str, /, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(metric):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != metric:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture
def agent(tmp_path):
    port, closed_port = free_port(), free_port()
    config = tmp_path / "agent.yml"
    config.write_text(agent_config(port, closed_port), encoding="utf-8")
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield {"proc": proc, "port": port, "config": config, "closed_port": closed_port, "log": tmp_path / "agent.log"}


def wait_for_metric(port: int, name: str, timeout: float = 10.0, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        if metric_value(text, name, **labels) is not None:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} never appeared on /metrics")


def test_metrics_carry_target_module_and_configured_labels(agent):
    for name in ("self-port", "telnet-policy"):
        wait_for_metric(agent["port"], "probe_success", target=name)
    text = wait_for_metric(agent["port"], "probe_success", target="refused")
    assert metric_value(text, "probe_success", target="self-port", module="tcp_connect", district="tp-my-tho") == 1
    assert metric_value(text, "probe_success", target="refused", role="máy chủ") == 0
    assert metric_value(text, "probe_failure_info", target="refused", reason="connect_refused") == 1
    assert metric_value(text, "probe_success", target="telnet-policy") == 1
    assert metric_value(text, "netmon_agent_info", agency="so-tttt", name="Sở Thông tin và Truyền thông") == 1


def test_live_metrics_pass_promtool_check_metrics(agent):
    promtool = require_binary("promtool", "prometheus")
    text = wait_for_metric(agent["port"], "probe_success", target="refused")
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_targets_are_probed_on_schedule_without_scrapes(agent):
    time.sleep(3.2)
    text = wait_for_metric(agent["port"], "netmon_agent_probe_runs_total", target="self-port")
    runs = metric_value(text, "netmon_agent_probe_runs_total", target="self-port", result="success")
    assert runs is not None and 2 <= runs <= 4  # 1 s interval over ~3 s, whatever the scrapes did


def test_probe_endpoint_answers_blackbox_style(agent):
    port = agent["port"]
    status, text = http_get(f"http://127.0.0.1:{port}/probe?target=127.0.0.1:{port}&module=tcp_connect")
    assert status == 200
    assert metric_value(text, "probe_success") == 1
    assert "target=" not in text  # like blackbox: Prometheus relabeling supplies instance/target
    status, text = http_get(f"http://127.0.0.1:{port}/probe?target=127.0.0.1:{agent['closed_port']}&module=tcp_connect")
    assert status == 200 and metric_value(text, "probe_success") == 0


@pytest.mark.parametrize(
    "query, reason",
    [("module=tcp_connect", "target parameter is missing"), ("target=x", "module parameter is missing"),
     ("target=x&module=nope", "unknown module 'nope'")],
)
def test_probe_endpoint_rejects_bad_requests_with_reason(agent, query, reason):
    status, text = http_get(f"http://127.0.0.1:{agent['port']}/probe?{query}")
    assert status == 400
    assert reason in text


def test_unknown_path_is_404_and_garbage_request_is_400(agent):
    assert http_get(f"http://127.0.0.1:{agent['port']}/nope")[0] == 404
    with socket.create_connection(("127.0.0.1", agent["port"]), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01garbage that is not http\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert http_get(f"http://127.0.0.1:{agent['port']}/-/healthy")[0] == 200  # still serving


def test_status_page_lists_targets(agent):
    wait_for_metric(agent["port"], "probe_success", target="refused")
    status, page = http_get(f"http://127.0.0.1:{agent['port']}/")
    assert status == 200
    assert "Sở Thông tin và Truyền thông" in page
    assert "refused" in page and "connect_refused" in page


def test_sighup_with_invalid_config_keeps_old_config_and_reports_it(agent):
    port = agent["port"]
    wait_for_metric(port, "probe_success", target="self-port")
    assert "reload failed" not in http_get(f"http://127.0.0.1:{port}/")[1]
    good = agent["config"].read_text(encoding="utf-8")
    agent["config"].write_text("agent: {id: broken\n", encoding="utf-8")
    os.kill(agent["proc"].pid, signal.SIGHUP)
    text = _wait_for_value(port, "netmon_agent_config_last_reload_successful", 0)
    assert metric_value(text, "probe_success", target="self-port") == 1
    assert "config reload failed" in agent["log"].read_text()
    page = http_get(f"http://127.0.0.1:{port}/")[1]  # the status page says it too, with the reason
    assert "Config reload failed</b> at " in page and f"config reload failed, the previous config keeps running: {agent['config']}:" in page
    agent["config"].write_text(good, encoding="utf-8")
    os.kill(agent["proc"].pid, signal.SIGHUP)
    _wait_for_value(port, "netmon_agent_config_last_reload_successful", 1)
    assert "reload failed" not in http_get(f"http://127.0.0.1:{port}/")[1]  # gone once a reload succeeds


def test_sighup_with_new_config_applies_it(agent):
    port = agent["port"]
    wait_for_metric(port, "probe_success", target="self-port")
    extra = f'  - {{name: added, address: "127.0.0.1:{port}", module: tcp_connect}}\n'
    agent["config"].write_text(agent_config(port, agent["closed_port"], extra), encoding="utf-8")
    os.kill(agent["proc"].pid, signal.SIGHUP)
    text = wait_for_metric(port, "probe_success", target="added")
    assert metric_value(text, "netmon_agent_config_last_reload_successful") == 1
    assert metric_value(text, "netmon_agent_targets") == 4


def test_sigterm_stops_gracefully(agent):
    os.kill(agent["proc"].pid, signal.SIGTERM)
    assert agent["proc"].wait(10) == 0
    assert "agent stopping" in agent["log"].read_text()


def _wait_for_value(port: int, name: str, value: float, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        if metric_value(text, name) == value:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{name} never became {value}")
