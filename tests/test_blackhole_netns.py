"""A target that black-holes every packet never shifts other targets' probe times (by more than 1 s)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.netns import _nft, netns_pair, ns_exec, ns_popen
from tests.support.procs import stop
from tests.support.require import require_root
from tests.test_agent_run import metric_value

ROOT = Path(__file__).resolve().parent.parent
AGENT_PORT = 9855
LISTEN_PORT = 8080
RUN_SECONDS = 12.0


def black_hole(ns: str, ifname: str, address: str) -> None:
    """The address answers ARP (it is on the link) but every IP packet to it vanishes."""
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", ifname], check=True)
    _nft(ns, f"table inet hole {{ chain incoming {{ type filter hook input priority 0; policy accept; ip daddr {address} drop; }}; }}")


def agent_config(server_ip: str, hole_ip: str) -> str:
    good = [f"  - {{name: ping-{i}, address: {server_ip}, module: icmp}}" for i in range(15)]
    good += [f'  - {{name: tcp-{i}, address: "{server_ip}:{LISTEN_PORT}", module: tcp}}' for i in range(15)]
    holes = [f"  - {{name: hole-ping-{i}, address: {hole_ip}, module: icmp}}" for i in range(5)]
    holes += [f'  - {{name: hole-tcp-{i}, address: "{hole_ip}:{LISTEN_PORT}", module: tcp}}' for i in range(5)]
    return textwrap.dedent(
        f"""\
        agent: {{id: blackhole-test, agency: test}}
        listen: 127.0.0.1:{AGENT_PORT}
        defaults: {{interval: 2s, timeout: 1800ms}}
        modules:
          icmp: {{prober: icmp, icmp: {{count: 3, packet_interval: 200ms}}}}
          tcp: {{prober: tcp}}
        targets:
        """
    ) + "\n".join(good + holes) + "\n"


def test_black_holed_targets_do_not_delay_the_others(tmp_path):
    require_root("network namespaces")
    with netns_pair("bh") as pair:
        hole_ip = pair.server_ip.rsplit(".", 1)[0] + ".77"
        black_hole(pair.server, pair.server_if, hole_ip)
        listener = ns_popen(pair.server, [sys.executable, "-c", (
            "import socket, time\n"
            f"s = socket.create_server(('0.0.0.0', {LISTEN_PORT}), backlog=512)\n"
            "while True:\n    c, _ = s.accept(); c.close()\n")])
        config = tmp_path / "agent.yml"
        config.write_text(agent_config(pair.server_ip, hole_ip), encoding="utf-8")
        agent = ns_popen(pair.client, [sys.executable, "-m", "agents.cli", "run", "--config", str(config)], cwd=ROOT)
        try:
            time.sleep(RUN_SECONDS)
            fetch = ns_exec(pair.client, [sys.executable, "-c", (
                f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{AGENT_PORT}/metrics', timeout=10).read().decode())")],
                timeout=30)
        finally:
            stop(agent)
            stop(listener)
    text = fetch.stdout
    assert fetch.returncode == 0, fetch.stderr
    for name in [f"ping-{i}" for i in range(15)] + [f"tcp-{i}" for i in range(15)]:
        assert metric_value(text, "probe_success", target=name) == 1, name
        runs = metric_value(text, "netmon_agent_probe_runs_total", target=name, result="success")
        assert runs is not None and runs >= RUN_SECONDS / 2 - 2, (name, runs)  # every 2 s slot was used
    for name in [f"hole-ping-{i}" for i in range(5)] + [f"hole-tcp-{i}" for i in range(5)]:
        assert metric_value(text, "probe_success", target=name) == 0, name
        assert metric_value(text, "probe_failure_info", target=name, reason="timeout") == 1, name
    started = metric_value(text, "netmon_agent_scheduling_lag_seconds_count")
    on_time = metric_value(text, "netmon_agent_scheduling_lag_seconds_bucket", le="1.0")
    assert started and on_time == started  # no run of any target started more than 1 s after its slot
    overruns = [line for line in text.splitlines() if line.startswith("netmon_agent_probe_overruns_total{") and "hole-" not in line]
    assert all(line.endswith(" 0.0") for line in overruns), overruns
