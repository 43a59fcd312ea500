"""The README's first command: the agent on the shipped example config works on any machine."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary
from tests.test_agent_run import http_get, metric_value

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "agent.example.yml"


def example_on_free_port(tmp_path: Path, host_enabled: bool = True) -> tuple[Path, int]:
    """The example config as shipped, moved to a free port (its targets follow, they probe the agent itself)."""
    port = free_port()
    text = EXAMPLE.read_text(encoding="utf-8").replace("9855", str(port))
    if not host_enabled:
        text = text.replace("  enabled: true                  # this machine", "  enabled: false                 # this machine")
    path = tmp_path / "agent.yml"
    path.write_text(text, encoding="utf-8")
    return path, port


def scrape_when_all_probed(port: int, targets: list[str], timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        if all(metric_value(text, "probe_success", target=name) is not None for name in targets):
            return text
        time.sleep(0.5)
    raise AssertionError(f"not every target was probed in {timeout}s:\n{text[-2000:]}")


EXAMPLE_TARGETS = ["localhost", "agent-port", "lookup-localhost", "agent-status-page"]


def test_every_example_target_succeeds_on_this_machine(tmp_path):
    config, port = example_on_free_port(tmp_path)
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        text = scrape_when_all_probed(port, EXAMPLE_TARGETS)
    for name in EXAMPLE_TARGETS:
        assert metric_value(text, "probe_success", target=name) == 1, (name, (tmp_path / "agent.log").read_text()[-2000:])
    assert metric_value(text, "probe_icmp_packets_received_total", target="localhost") >= 1
    assert metric_value(text, "node_memory_MemTotal_bytes") > 0  # host metrics are on in the example
    assert metric_value(text, "probe_success", target="gateway") is None  # shipped disabled


def test_metrics_of_all_network_probers_pass_promtool(tmp_path):
    promtool = require_binary("promtool", "prometheus")
    config, port = example_on_free_port(tmp_path, host_enabled=False)  # node_* names fail promtool's camelCase lint
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        text = scrape_when_all_probed(port, EXAMPLE_TARGETS)
    assert {"probe_icmp_rtt_seconds_bucket", "probe_http_duration_seconds", "probe_dns_lookup_time_seconds",
            "probe_tcp_connect_duration_seconds"} <= {line.split("{")[0] for line in text.splitlines()}
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
