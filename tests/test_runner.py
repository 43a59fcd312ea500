"""The runner: all_addresses targets probe every resolved address with an `ip` label."""

from __future__ import annotations

import socket

from agents.catalog import parse_config
from agents.resources import ProbeResources
from agents.runner import run_target


def labelled(result, name):
    return {dict(s.labels).get("ip"): s.value for s in result.samples if s.metric.name == name}


async def test_all_addresses_probes_each_address_of_a_name():
    with socket.create_server(("127.0.0.1", 0)) as v4:
        port_v4 = v4.getsockname()[1]
        config = parse_config(
            f"""\
agent: {{id: a, agency: b}}
modules:
  tcp_both: {{prober: tcp, timeout: 2s}}
targets:
  - {{name: local, address: "localhost:{port_v4}", module: tcp_both, all_addresses: true}}
""",
            "x.yml",
        )
        resources = ProbeResources()
        try:
            result = await run_target(config.targets[0], resources)
        finally:
            resources.close()
    per_ip = labelled(result, "probe_address_success")
    assert per_ip.get("127.0.0.1") == 1
    assert "probe_tcp_connect_duration_seconds" in {s.metric.name for s in result.samples if dict(s.labels).get("ip") == "127.0.0.1"}
    success = [s.value for s in result.samples if s.metric.name == "probe_success"]
    assert success == [1.0 if all(v == 1 for v in per_ip.values()) else 0.0]
