"""The README's first command, `scripts/demo`: collector + agent (+ Prometheus) on this machine, stopped by Ctrl-C.

The demo runs once for the module on free ports and a temporary state directory (its environment variables);
the last test stops it the way a terminal's Ctrl-C does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.require import require_binary
from tests.test_agent_run import http_get, metric_value

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo"
READY_WITHIN = 60.0  # the promise: a working demo in under a minute
DEMO_TARGETS = ["localhost", "agent-port", "lookup-localhost", "agent-status-page", "collector-status-page"]
IDENTITY = {"agency": "demo", "agent": "demo-agent", "district": "demo", "level": "province"}


def demo_env(state: Path, agent_port: int, collector_port: int, prometheus_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "NETMON_DEMO_DIR": str(state),
        "NETMON_DEMO_AGENT_PORT": str(agent_port),
        "NETMON_DEMO_COLLECTOR_PORT": str(collector_port),
        "NETMON_DEMO_PROMETHEUS_PORT": str(prometheus_port),
    }


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen, output: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"scripts/demo exited with {proc.returncode}:\n{output.read_text()[-3000:]}")
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout}s:\n{output.read_text()[-3000:]}")


def fetch(url: str) -> tuple[int, str]:
    """Like http_get, but a server that is not listening yet is an answer too (status 0)."""
    try:
        return http_get(url, timeout=3)
    except urllib.error.URLError:
        return 0, ""


def all_targets_pushed(port: int) -> str | None:
    _, text = fetch(f"http://127.0.0.1:{port}/metrics")
    found = all(metric_value(text, "probe_success", target=name, **IDENTITY) is not None for name in DEMO_TARGETS)
    return text if found else None


def demo_agency_up(port: int) -> str | None:
    status, page = fetch(f"http://127.0.0.1:{port}/")
    return page if status == 200 and 'data-agency="demo" data-status="up"' in page else None


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    require_binary("prometheus")  # the demo starts it when present; the test proves that part too
    tmp = tmp_path_factory.mktemp("demo")
    ports = {"agent": free_port(), "collector": free_port(), "prometheus": free_port()}
    output = tmp / "demo.out"
    started = time.monotonic()
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [str(DEMO)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT),
            env=demo_env(tmp / "state", ports["agent"], ports["collector"], ports["prometheus"]),
        )
    running = {"proc": proc, "ports": ports, "state": tmp / "state", "output": output}
    try:
        running["status_page"] = wait_until(
            lambda: demo_agency_up(ports["collector"]), READY_WITHIN, "the demo agency up on the status page", proc, output
        )
        remaining = READY_WITHIN - (time.monotonic() - started)
        running["collector_metrics"] = wait_until(
            lambda: all_targets_pushed(ports["collector"]), remaining, "every demo target's series at the collector",
            proc, output,
        )
        running["pids"] = {name: int((tmp / "state" / f"{name}.pid").read_text()) for name in ports}
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_collector_status_page_lists_the_demo_agency_with_its_agent_up(demo):
    page = demo["status_page"]
    assert "Trung tâm Công nghệ thông tin và Truyền thông (demo)" in page
    assert 'data-agency="demo" data-status="up"' in page
    assert 'data-down="0" data-partial="0" data-up="1" data-agencies="1"' in page and "1 bình thường" in page


def test_collector_metrics_carry_the_agents_probe_series_with_identity_labels(demo):
    text = demo["collector_metrics"]
    for name in DEMO_TARGETS:
        assert metric_value(text, "probe_success", target=name, **IDENTITY) == 1, name
    assert metric_value(text, "netmon_agent_up", **IDENTITY) == 1
    assert metric_value(text, "probe_icmp_packets_received_total", target="localhost", **IDENTITY) >= 1


def test_agent_metrics_are_populated(demo):
    _, text = http_get(f"http://127.0.0.1:{demo['ports']['agent']}/metrics")
    assert metric_value(text, "probe_success", target="collector-status-page") == 1
    assert metric_value(text, "netmon_agent_info", agency="demo") == 1
    assert metric_value(text, "node_memory_MemTotal_bytes") > 0


def test_prometheus_scrapes_the_collector_when_installed(demo):
    url = f"http://127.0.0.1:{demo['ports']['prometheus']}/api/v1/query?query=probe_success%7Bagency%3D%22demo%22%7D"
    found = wait_until(lambda: '"agent":"demo-agent"' in fetch(url)[1], 30, "probe_success in Prometheus",
                       demo["proc"], demo["output"])
    assert found


def test_push_token_is_a_private_file_never_printed_or_exposed(demo):
    token_file = demo["state"] / "push.token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token_file.stat().st_mode & 0o777 == 0o600
    ports = demo["ports"]
    exposed = [
        demo["output"].read_text(),
        http_get(f"http://127.0.0.1:{ports['collector']}/metrics")[1],
        http_get(f"http://127.0.0.1:{ports['collector']}/")[1],
        http_get(f"http://127.0.0.1:{ports['agent']}/metrics")[1],
        http_get(f"http://127.0.0.1:{ports['agent']}/")[1],
        *probe_once_outputs(demo["state"]),
    ]
    assert all(token not in text for text in exposed)


def probe_once_outputs(state: Path) -> list[str]:
    """`netmon-agent probe --once` on the demo agent's config, as a table and as JSON (stdout and stderr)."""
    outputs = []
    for extra in ([], ["--json"]):
        argv = [sys.executable, "-m", "agents.cli", "probe", "--config", "agent.yml", "--once", "--target", "agent-port", *extra]
        result = subprocess.run(argv, cwd=str(state), capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    return outputs


def test_ctrl_c_stops_every_process_it_started(demo):
    proc = demo["proc"]
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    assert proc.wait(30) == 0
    assert "demo: stopped" in demo["output"].read_text()
    for name, pid in demo["pids"].items():
        assert process_is_gone(pid), name


def test_busy_port_is_a_clear_error_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        agent_port = busy.getsockname()[1]
        env = demo_env(tmp_path / "state", agent_port, free_port(), free_port())
        result = subprocess.run([str(DEMO)], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert re.search(rf"port {agent_port} \(agent\) on 127\.0\.0\.1 is already in use", result.stderr), result.stderr
    assert "NETMON_DEMO_AGENT_PORT" in result.stderr
    assert not (tmp_path / "state").exists()  # checked before anything is created or started


def test_readme_first_command_is_the_demo():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```sh\n", 1)[1]
    assert first_block.splitlines()[0].split("#")[0].strip() == "scripts/demo"



@pytest.mark.parametrize(("signal_sent", "code"), [(signal.SIGINT, 0), (signal.SIGKILL, 1)])
def test_an_agent_that_stops_cleanly_ends_the_demo_cleanly_and_a_crash_ends_it_with_1(tmp_path, signal_sent, code):
    """Ctrl-C reaches the whole group, and the agent may finish before the script's trap runs: its code 0 is a
    clean stop (exit 0, everything stopped); a collector or agent that dies of anything else is a failure (1)."""
    ports = {"agent": free_port(), "collector": free_port(), "prometheus": free_port()}
    state, output = tmp_path / "state", tmp_path / "demo.out"
    env = {**demo_env(state, ports["agent"], ports["collector"], ports["prometheus"]), "NETMON_DEMO_PROMETHEUS": "off"}
    with open(output, "wb") as out:
        proc = subprocess.Popen([str(DEMO)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(ROOT), env=env)
    healthy = f"http://127.0.0.1:{ports['agent']}/-/healthy"
    try:
        wait_until(lambda: (state / "agent.pid").exists() and fetch(healthy)[0] == 200,
                   READY_WITHIN, "the demo agent healthy", proc, output)
        pids = {name: int((state / f"{name}.pid").read_text()) for name in ("agent", "collector")}
        os.kill(pids["agent"], signal_sent)  # the agent alone, not the group: the script's trap does not run
        assert proc.wait(30) == code, output.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    text = output.read_text()
    assert ("demo: stopped" in text) == (code == 0), text[-3000:]
    assert all(process_is_gone(pid) for pid in pids.values()), text[-3000:]
