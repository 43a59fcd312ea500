"""`probe --once` times each probe as if it ran alone: no other probe's start-up (imports, TLS contexts, the ICMP
engine) and no other probe's work lands inside a probe's timed phases."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from agents.catalog import PROBERS, parse_config
from agents.probes.tlsinfo import TLS_CONTEXTS
from agents.resources import ProbeResources
from tests.support.dnsmasq import running_dnsmasq

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts and closes, on a thread of its own."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


@pytest.fixture
def web() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


@pytest.fixture
def full_set(tmp_path: Path, listener: int, web: int) -> Iterator[Path]:
    with running_dnsmasq(tmp_path / "dns", ["host-record=portal.test.lan,10.1.2.3"]) as dns:
        config = tmp_path / "agent.yml"
        config.write_text(
            f"""\
agent: {{id: timings, agency: test}}
modules:
  dns: {{prober: dns, timeout: 5s, dns: {{query_name: portal.test.lan, query_type: A}}}}
  http: {{prober: http, timeout: 5s}}
  icmp: {{prober: icmp, timeout: 5s, icmp: {{count: 1}}}}
  tcp: {{prober: tcp, timeout: 5s}}
targets:
  - {{name: dns, address: "{dns.address}", module: dns}}
  - {{name: web, address: "http://127.0.0.1:{web}/", module: http}}
  - {{name: tls, address: "https://127.0.0.1:{listener}/", module: http}}
  - {{name: loopback, address: 127.0.0.1, module: icmp}}
  - {{name: port, address: "127.0.0.1:{listener}", module: tcp}}
""",
            encoding="utf-8",
        )
        yield config


def probe_once(config: Path, *args: str) -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "probe", "--once", "--json", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.stdout, done.stderr
    return {result["target"]: result for result in json.loads(done.stdout)["results"]}


def tcp_connect_seconds(result: dict) -> float:
    (value,) = (s["value"] for s in result["samples"] if s["name"] == "probe_tcp_connect_duration_seconds")
    return value


def test_a_probes_timings_with_the_full_set_agree_with_it_alone_within_a_millisecond(full_set: Path):
    together, alone = [], []
    for _ in range(RUNS):
        results = probe_once(full_set)
        assert results["port"]["success"] and results["dns"]["success"] and results["web"]["success"], results
        together.append(tcp_connect_seconds(results["port"]))
        alone.append(tcp_connect_seconds(probe_once(full_set, "--target", "port")["port"]))
    # medians: the machine running the tests is shared, one run may be descheduled either way
    assert abs(statistics.median(together) - statistics.median(alone)) < 0.001, (together, alone)


def test_preparing_a_module_does_its_one_time_work_before_any_probe():
    config = parse_config(
        """\
agent: {id: a, agency: b}
modules:
  web: {prober: http}
  names: {prober: dns, dns: {query_name: example.org, query_type: MX}}
targets:
  - {name: w, address: "https://127.0.0.1:1/", module: web}
  - {name: n, address: "127.0.0.1:1", module: names}
""",
        "agent.yml",
    )
    resources = ProbeResources()
    for module in config.modules.values():
        PROBERS[module.prober].prepare(module, resources)
    assert resources.get(TLS_CONTEXTS)._contexts, "the TLS client context is built"
    for loaded in ("dns.asyncquery", "dns._asyncio_backend", "dns.rdtypes.ANY.MX"):  # certificates: agents/probes/x509fields.py
        assert loaded in sys.modules, loaded


RUN_INTERVAL = 2.0


def names_in_one_slot(agent_id: str, stems: list[str], interval: float) -> list[str]:
    """A target name per stem whose schedule offset is the first one's: all their first runs start at once."""
    from agents.scheduler import stable_offset

    wanted = stable_offset(agent_id, stems[0], interval)
    names = [stems[0]]
    for stem in stems[1:]:
        names.append(next(f"{stem}-{n}" for n in range(10_000) if stable_offset(agent_id, f"{stem}-{n}", interval) == wanted))
    return names


def connect_of_each_run(port: int, target: str, runs: int, timeout: float, after: float = 0.0) -> list[float]:
    """probe_tcp_connect_duration_seconds of the target's `runs` runs after its run number `after`, read from
    /metrics after each."""
    from tests.test_agent_run import http_get, metric_value

    seen: list[float] = []
    done = after
    deadline = time.monotonic() + timeout
    while len(seen) < runs and time.monotonic() < deadline:
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        count = metric_value(text, "netmon_agent_probe_runs_total", target=target) or 0.0
        if count > done:
            assert count == done + 1, f"missed a run of {target}: polling too slow"
            seen.append(metric_value(text, "probe_tcp_connect_duration_seconds", target=target))
            done = count
        time.sleep(0.05)
    return seen


def run_config(agent_id: str, listen: int, listener: int, web: int, dns_address: str, only_tcp: bool = False) -> str:
    """A TCP target and DNS, HTTPS, HTTP and ICMP targets whose runs start in the same slot (only_tcp: those
    commented out by a mark `reload_with_every_target` removes)."""
    port_name, dns_name, tls_name, web_name, ping_name = names_in_one_slot(
        agent_id, ["port", "dns", "tls", "web", "ping"], RUN_INTERVAL
    )
    hidden = "# others" if only_tcp else ""  # a reload removes the mark
    others = f"""\
{hidden}  - {{name: {dns_name}, address: "{dns_address}", module: dns}}
{hidden}  - {{name: {tls_name}, address: "https://127.0.0.1:{listener}/", module: http}}
{hidden}  - {{name: {web_name}, address: "http://127.0.0.1:{web}/", module: http}}
{hidden}  - {{name: {ping_name}, address: 127.0.0.1, module: icmp}}
"""
    return f"""\
agent: {{id: {agent_id}, agency: test}}
listen: "127.0.0.1:{listen}"
defaults: {{interval: {RUN_INTERVAL:g}s}}
modules:
  dns: {{prober: dns, timeout: 1s, dns: {{query_name: portal.test.lan, query_type: MX}}}}
  http: {{prober: http, timeout: 1s}}
  icmp: {{prober: icmp, timeout: 1s, icmp: {{count: 1}}}}
  tcp: {{prober: tcp, timeout: 1s}}
targets:
  - {{name: {port_name}, address: "127.0.0.1:{listener}", module: tcp}}
{others}"""


def reload_with_every_target(listen: int, port_name: str, config: Path, proc) -> float:
    """After the TCP target's first run: SIGHUP with the other targets added; its runs so far once it is applied."""
    import signal

    from tests.test_agent_run import http_get, metric_value

    connect_of_each_run(listen, port_name, 1, timeout=RUN_INTERVAL * 3)
    reloaded_at = "netmon_agent_config_last_reload_success_timestamp_seconds"
    before = metric_value(http_get(f"http://127.0.0.1:{listen}/metrics")[1], reloaded_at)
    config.write_text(config.read_text().replace("# others", ""))
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RUN_INTERVAL
    while time.monotonic() < deadline:
        text = http_get(f"http://127.0.0.1:{listen}/metrics")[1]
        if metric_value(text, reloaded_at) != before:
            return metric_value(text, "netmon_agent_probe_runs_total", target=port_name) or 0.0
        time.sleep(0.02)
    raise AssertionError("the reload was not applied")


@pytest.mark.parametrize("when", ["start", "reload"])
def test_the_running_agents_first_probes_hold_no_other_modules_start_up(tmp_path: Path, listener: int, web: int, when: str):
    """`run` prepares every module before the first slot, and after a reload the modules of new targets: the TCP
    connect of the run that shares its slot with the first runs of DNS, HTTPS, HTTP and ICMP targets is as short as
    later runs' (unprepared, it held their imports and CA loads: +50 ms and more)."""
    from tests.support.ports import free_port
    from tests.support.procs import running, wait_for_port

    agent_id, listen = f"timings-{when}", free_port()
    port_name = names_in_one_slot(agent_id, ["port"], RUN_INTERVAL)[0]
    with running_dnsmasq(tmp_path / "dns", ["host-record=portal.test.lan,10.1.2.3"]) as dns:
        config = tmp_path / "agent.yml"
        config.write_text(run_config(agent_id, listen, listener, web, dns.address, only_tcp=when == "reload"))
        argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
        with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
            wait_for_port("127.0.0.1", listen, proc=proc)
            runs = reload_with_every_target(listen, port_name, config, proc) if when == "reload" else 0.0
            first, *later = connect_of_each_run(listen, port_name, RUNS + 1, timeout=RUN_INTERVAL * (RUNS + 3), after=runs)
    assert len(later) == RUNS, (first, later)
    assert first < statistics.median(later) + 0.010, (first, later)
