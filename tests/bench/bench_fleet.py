"""Collector config load with fleet templates at scale: render every agent's served config and check it.

    cd /work/main && .venv/bin/python tests/bench/bench_fleet.py [--agents 1000] [--runs 5]

The inventory has one agency per agent (level commune or district, 20 districts), and the templates of
config/collector.example.yml plus an SSH check and a second SNMP device with a custom profile, so every agent is
served modules, targets, SNMP (built-in and custom profiles) and SSH. Prints the median wall time of
`parse_collector_config` (render + check of every agent) over `--runs` loads, the first load's time, and the
median CPU time of a load: this process's and its children's (the agent program that checks the configs), which
other work on the machine inflates less than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.config import parse_collector_config  # noqa: E402
from tests.bench import idle  # noqa: E402

TEMPLATES = """\
templates:
  - name: province-services
    modules:
      icmp: {prober: icmp, timeout: 5s, icmp: {count: 5, packet_interval: 500ms}}
      tcp_connect: {prober: tcp, timeout: 5s}
      http_2xx: {prober: http, timeout: 10s, http: {valid_status_codes: [200]}}
    targets:
      - {name: dc-gateway, address: 10.0.0.1, module: icmp}
      - {name: mail-smtp, address: "10.0.0.25:25", module: tcp_connect}
      - {name: mail-imap, address: "10.0.0.25:993", module: tcp_connect}
      - {name: web-portal, address: "https://10.0.0.80/", module: http_2xx}
      - {name: public-services-portal, address: "https://10.0.0.81/", module: http_2xx}
      - {name: document-exchange, address: "https://10.0.0.82/", module: http_2xx}
      - {name: own-gateway, address: "{{ agency.gateway }}", module: icmp}
  - name: district-router
    select: {levels: [district, commune]}
    targets:
      - {name: district-router, address: "{{ district.router }}", module: icmp}
  - name: lan
    snmp_auths:
      lan: {version: 2c, community: "${NETMON_SNMP_COMMUNITY}"}
    snmp_profiles:
      ups:
        scalars:
          - {name: ups_battery_charge_ratio, oid: 1.3.6.1.2.1.33.1.2.4.0, type: gauge, help: "Battery charge"}
    snmp_devices:
      - {name: lan-switch, address: "{{ agency.lan_switch }}", auth: lan, interval: 1m}
      - {name: ups, address: "{{ agency.ups }}", auth: lan, profiles: [system, ups], interval: 1m}
    ssh_hosts:
      server: {address: "{{ agency.server }}", user: netmon, key_file: /etc/netmon/ssh/id_ed25519, known_hosts: /etc/netmon/ssh/known_hosts}
    ssh_checks:
      - {name: server-disk, host: server, command: df, interval: 1m}
"""


def collector_yaml(agents: int) -> str:
    lines = ["agencies:"]
    for number in range(agents):
        level = "district" if number % 10 == 0 else "commune"
        octet2, octet3 = divmod(number, 250)
        lines.append(
            f"  - {{id: ag-{number}, name: 'Xã {number}', district: d-{number % 20}, level: {level}, vars: "
            f"{{gateway: 10.{octet2 + 1}.{octet3}.1, lan_switch: 10.{octet2 + 1}.{octet3}.2, "
            f"ups: 10.{octet2 + 1}.{octet3}.3, server: 10.{octet2 + 1}.{octet3}.4}}}}"
        )
    lines.append("districts:")
    lines += [f"  - {{id: d-{number}, vars: {{router: 10.200.{number}.1}}}}" for number in range(20)]
    lines.append("agents:")
    lines += [f"  - {{id: ag-{number}-1, agency: ag-{number}, mode: push, bearer_token: '${{BENCH_TOKEN_{number}}}'}}" for number in range(agents)]
    return "\n".join(lines) + "\n" + TEMPLATES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    idle.start()  # no peer here, so no ratio; the load still says what the times are worth
    os.environ.update({f"BENCH_TOKEN_{number}": f"bench-token-{number:05d}-x" for number in range(args.agents)})
    text = collector_yaml(args.agents)
    seconds, cpu_seconds = [], []
    for _ in range(args.runs):
        started, cpu_started = time.perf_counter(), cpu_time()
        config = parse_collector_config(text, "bench-collector.yml")
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(cpu_time() - cpu_started)
    served = config.fleet.configs[f"ag-{args.agents - 1}-1"]
    print(f"{args.agents} agents, {len(served.text.splitlines())} served YAML lines each")
    print(
        f"load (render + check): first {seconds[0]:.2f} s, median {statistics.median(seconds):.2f} s over {args.runs} loads; "
        f"CPU median {statistics.median(cpu_seconds):.2f} s"
    )


def cpu_time() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
