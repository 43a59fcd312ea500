"""Agent RSS with every prober in use, against real local peers, beside blackbox_exporter probing the same peers.

    cd /work/main && .venv/bin/python tests/bench/bench_agent_memory.py [--rounds 4] [--only agent,blackbox]

Needs root (postfix, dovecot, sshd switch users). Starts snmpd (v3 authPriv SHA/AES), Postfix + Dovecot, sshd,
dnsmasq and an HTTP and an HTTPS server from tests/support, then `netmon-agent run` with host metrics and one
target of each prober on a 5 s interval: icmp, tcp, tcp+TLS, http, https, dns (dnspython path), smtp (STARTTLS +
AUTH), imap (implicit TLS), pop3 (implicit TLS), mail_roundtrip, ssh (a command on sshd), snmp (v3 authPriv,
if_mib profile). Every round scrapes /metrics once. Prints the agent's VmHWM (peak RSS) and VmRSS at the end,
then blackbox_exporter's after /probe requests of comparable modules (http, https, tcp, tcp+TLS, dns, smtp
STARTTLS, imap, pop3, icmp; it has no SNMP, SSH or roundtrip prober), and last the ratio of the peaks (only on
an idle machine: tests/bench/idle.py). `--only first-use` prints VmRSS after each prober's first probe in a fresh
process (what each one's imports and state cost); `--skip ssh,...` leaves probers out of the config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import idle  # noqa: E402
from tests.support.dnsmasq import running_dnsmasq  # noqa: E402
from tests.support.httpd import HttpServer, Reply  # noqa: E402
from tests.support.mailserver import PROBE, MailSystem, running_mail_system  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import running, wait_for_port  # noqa: E402
from tests.support.require import require_binary  # noqa: E402
from tests.support.snmpd import V3_AUTH_PASSWORD, V3_PRIV_PASSWORD, V3_USER, Snmpd, running_snmpd  # noqa: E402
from tests.support.sshd import Sshd, make_key, running_sshd  # noqa: E402

ROUND_SECONDS = 5.0
WARMUP_SECONDS = 12.0  # every target has run at least twice (the first mail roundtrip included)
GOAL_MB = 45.0
DNS_RECORDS = ["host-record=www.bench.local,127.0.0.1", "mx-host=bench.local,mail.bench.local,10"]


def memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {field: int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024 for field in ("VmHWM", "VmRSS")}


# --- netmon agent -------------------------------------------------------------------------------------------------


def agent_config(work: Path, port: int, peers: dict, skip: frozenset[str] = frozenset()) -> dict:
    mail: MailSystem = peers["mail"]
    snmpd: Snmpd = peers["snmpd"]
    sshd: Sshd = peers["sshd"]
    ca = {"ca_file": str(mail.ca.cert)}
    auth = {"username": PROBE.address, "password_file": str(mail.password_file(PROBE))}
    modules = {
        "ping": {"prober": "icmp", "icmp": {"count": 2, "packet_interval": "100ms"}},
        "tcp": {"prober": "tcp"},
        "tcp_tls": {"prober": "tcp", "tcp": {"tls": True, "tls_config": ca}},
        "http": {"prober": "http"},
        "https": {"prober": "http", "http": {"tls_config": ca}},
        "dns": {"prober": "dns", "dns": {"resolver": peers["dns"].address, "query_type": "A"}},
        "smtp": {"prober": "smtp", "smtp": {"tls": "starttls", "tls_config": ca, "auth": auth}},
        "imaps": {"prober": "imap", "imap": {"tls": "implicit", "tls_config": ca, "auth": auth}},
        "pop3s": {"prober": "pop3", "pop3": {"tls": "implicit", "tls_config": ca, "auth": auth, "stat": True}},
        "roundtrip": {"prober": "mail_roundtrip", "mail_roundtrip": {
            "mail_from": PROBE.address, "rcpt_to": PROBE.address,
            "smtp": {"port": mail.ports["submission"], "tls_config": ca, "auth": auth},
            "mailbox": {"protocol": "imap", "tls": "implicit", "port": mail.ports["imaps"], "tls_config": ca,
                        "poll_interval": "50ms", "auth": auth},
        }},
    }
    targets = [
        {"name": "ping", "address": "127.0.0.1", "module": "ping"},
        {"name": "tcp", "address": mail.address("smtp"), "module": "tcp"},
        {"name": "tcp-tls", "address": mail.address("imaps"), "module": "tcp_tls"},
        {"name": "http", "address": peers["http"].url("/"), "module": "http"},
        {"name": "https", "address": peers["https"].url("/"), "module": "https"},
        {"name": "dns", "address": "www.bench.local", "module": "dns"},
        {"name": "smtp", "address": mail.address("submission"), "module": "smtp"},
        {"name": "imaps", "address": mail.address("imaps"), "module": "imaps"},
        {"name": "pop3s", "address": mail.address("pop3s"), "module": "pop3s"},
        {"name": "roundtrip", "address": "127.0.0.1", "module": "roundtrip"},
    ]
    config = {
        "agent": {"id": "bench-memory", "agency": "bench"},
        "listen": f"127.0.0.1:{port}",
        "defaults": {"interval": f"{ROUND_SECONDS:g}s", "timeout": "4s"},
        "host": {"enabled": True},
        "modules": modules,
        "targets": targets,
        "snmp_auths": {"v3": {
            "version": 3, "username": V3_USER, "auth_protocol": "SHA", "auth_password": "${BENCH_SNMP_AUTH}",
            "priv_protocol": "AES", "priv_password": "${BENCH_SNMP_PRIV}",
        }},
        "snmp_devices": [{"name": "switch", "address": snmpd.host, "port": snmpd.port, "auth": "v3",
                          "profiles": ["if_mib"], "interval": f"{ROUND_SECONDS:g}s"}],
        "ssh_hosts": {"box": {"address": sshd.host, "port": sshd.port, "user": sshd.user,
                              "key_file": str(peers["ssh_key"]), "host_key_fingerprint": sshd.host_key_fingerprint}},
        "ssh_checks": [{"name": "box-df", "host": "box", "command": "df /", "interval": f"{ROUND_SECONDS:g}s"}],
    }
    return without(config, skip)


def without(config: dict, skip: frozenset[str]) -> dict:
    """The config without the probers in `skip` (e.g. ssh: what an agent without SSH checks holds)."""
    modules = {name: module for name, module in config["modules"].items() if module["prober"] not in skip}
    config = {**config, "modules": modules, "targets": [t for t in config["targets"] if t["module"] in modules]}
    for prober, keys in (("ssh", ("ssh_hosts", "ssh_checks")), ("snmp", ("snmp_auths", "snmp_devices")), ("host", ("host",))):
        if prober in skip:
            config = {key: value for key, value in config.items() if key not in keys}
    return config


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def failing_targets(text: str) -> list[str]:
    return sorted(set(re.findall(r'^probe_success\{[^}]*target="([^"]+)"[^}]*\} 0$', text, re.MULTILINE)))


def bench_agent(work: Path, peers: dict, rounds: int, skip: frozenset[str]) -> dict[str, float]:
    port = free_port()
    config = work / "agent.yml"
    config.write_text(json.dumps(agent_config(work, port, peers, skip)), encoding="utf-8")  # JSON is YAML
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    env = {**os.environ, "BENCH_SNMP_AUTH": V3_AUTH_PASSWORD, "BENCH_SNMP_PRIV": V3_PRIV_PASSWORD}
    with running(argv, log_path=str(work / "agent.log"), env=env, cwd=ROOT) as agent:
        try:
            wait_for_port("127.0.0.1", port, timeout=30, proc=agent)
        except RuntimeError:
            sys.exit(f"the agent did not start:\n{(work / 'agent.log').read_text()}")
        time.sleep(WARMUP_SECONDS)
        for _ in range(rounds):
            text = scrape(port)
            time.sleep(ROUND_SECONDS)
        figures = memory_mb(agent.pid)
    failing = failing_targets(text)
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    print(f"netmon-agent   VmHWM {figures['VmHWM']:5.1f} MB   VmRSS {figures['VmRSS']:5.1f} MB   "
          f"({series} series in the last scrape; failing targets: {', '.join(failing) or 'none'})")
    return figures


# --- what each prober's first use costs, in this process ---------------------------------------------------------


FIRST_USE = """\
import asyncio, os, sys
from agents.catalog import PROBERS, load_config
from agents.host.collector import HostCollector
from agents.host.config import host_config
from agents.resources import ProbeResources
from agents.runner import run_target

def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024

config = load_config(sys.argv[1])
last, modules = rss(), len(sys.modules)
print(f"{'(config loaded)':28} {last:9.1f} MB {'':8} {modules:8}")

def report(what):
    global last, modules
    now = rss()
    print(f"{what:28} {now:9.1f} MB {now - last:+6.1f} MB {len(sys.modules) - modules:+8}")
    last, modules = now, len(sys.modules)

async def main():
    resources = ProbeResources()
    list(HostCollector(lambda: host_config(config)).collect())
    report("host collectors")
    for target in config.targets:
        PROBERS[target.module.prober].prepare(target.module, resources)
        result = await run_target(target, resources)
        report(f"{target.module.prober} ({target.name}){'' if result.success else ' FAILED'}")
    resources.close()

asyncio.run(main())
"""


def first_use_costs(work: Path, peers: dict, skip: frozenset[str]) -> None:
    """VmRSS and loaded modules before and after each prober's first probe (prepare included), in config order, in
    a fresh process: a prober's figure is what it adds to those before it (a shared library counts for the first)."""
    config = work / "first-use.yml"
    config.write_text(json.dumps(agent_config(work, free_port(), peers, skip)), encoding="utf-8")
    env = {**os.environ, "BENCH_SNMP_AUTH": V3_AUTH_PASSWORD, "BENCH_SNMP_PRIV": V3_PRIV_PASSWORD}
    print(f"{'first use of':28} {'VmRSS after':>11} {'added':>8} {'modules':>8}")
    subprocess.run([sys.executable, "-c", FIRST_USE, str(config)], cwd=ROOT, env=env, check=True, timeout=120)


# --- blackbox_exporter --------------------------------------------------------------------------------------------


def blackbox_modules(peers: dict) -> str:
    ca = peers["mail"].ca.cert
    tls = f"tls_config: {{ca_file: '{ca}'}}"
    return f"""\
modules:
  icmp: {{prober: icmp, timeout: 4s, icmp: {{preferred_ip_protocol: ip4}}}}
  tcp: {{prober: tcp, timeout: 4s}}
  tcp_tls: {{prober: tcp, timeout: 4s, tcp: {{tls: true, {tls}}}}}
  http: {{prober: http, timeout: 4s}}
  https: {{prober: http, timeout: 4s, http: {{{tls}}}}}
  dns: {{prober: dns, timeout: 4s, dns: {{query_name: www.bench.local, query_type: A, preferred_ip_protocol: ip4}}}}
  smtp_starttls:
    prober: tcp
    timeout: 4s
    tcp:
      {tls}
      query_response:
        - expect: "^220 "
        - send: "EHLO bench"
        - expect: "^250 "
        - send: "STARTTLS"
        - expect: "^220 "
        - starttls: true
        - send: "EHLO bench"
        - expect: "^250 "
        - send: "QUIT"
  imaps:
    prober: tcp
    timeout: 4s
    tcp: {{tls: true, {tls}, query_response: [{{expect: "OK"}}, {{send: "a1 LOGOUT"}}]}}
  pop3s:
    prober: tcp
    timeout: 4s
    tcp: {{tls: true, {tls}, query_response: [{{expect: "^[+]OK"}}, {{send: "QUIT"}}]}}
"""


def blackbox_requests(peers: dict) -> list[tuple[str, str]]:
    mail = peers["mail"]
    return [
        ("icmp", "127.0.0.1"), ("tcp", mail.address("smtp")), ("tcp_tls", mail.address("imaps")),
        ("http", peers["http"].url("/")), ("https", peers["https"].url("/")), ("dns", peers["dns"].address),
        ("smtp_starttls", mail.address("submission")), ("imaps", mail.address("imaps")),
        ("pop3s", mail.address("pop3s")),
    ]


def bench_blackbox(work: Path, peers: dict, rounds: int) -> dict[str, float] | None:
    try:
        binary = require_binary("prometheus-blackbox-exporter")
    except Exception as exc:  # noqa: BLE001 - a missing peer is reported, the agent's figure stands alone
        print(f"blackbox_exporter: not run ({exc})")
        return None
    config = work / "blackbox.yml"
    config.write_text(blackbox_modules(peers), encoding="utf-8")
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    failed: set[str] = set()
    with running(argv, log_path=str(work / "blackbox.log")) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        for _ in range(rounds + 2):
            for module, target in blackbox_requests(peers):
                query = urllib.parse.urlencode({"module": module, "target": target})
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe?{query}", timeout=10) as response:
                    if "\nprobe_success 1" not in response.read().decode():
                        failed.add(module)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            time.sleep(ROUND_SECONDS / 5)
        figures = memory_mb(proc.pid)
    print(f"blackbox       VmHWM {figures['VmHWM']:5.1f} MB   VmRSS {figures['VmRSS']:5.1f} MB   "
          f"(failing modules: {', '.join(sorted(failed)) or 'none'})")
    return figures


# --- peers --------------------------------------------------------------------------------------------------------


def start_peers(stack: ExitStack, work: Path) -> dict:
    mail = stack.enter_context(running_mail_system())
    key = make_key(work / "ssh" / "client")
    return {
        "mail": mail,
        "snmpd": stack.enter_context(running_snmpd(work / "snmpd")),
        "sshd": stack.enter_context(running_sshd(work / "sshd", [key])),
        "ssh_key": key,
        "dns": stack.enter_context(running_dnsmasq(work / "dns", DNS_RECORDS)),
        "http": stack.enter_context(HttpServer(routes={"/": Reply(body=b"ok")})),
        "https": stack.enter_context(HttpServer(tls=mail.certificate, routes={"/": Reply(body=b"ok")})),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="probe rounds (5 s each) with a /metrics scrape")
    parser.add_argument("--only", default="agent,blackbox", help="agent, blackbox and/or first-use (in-process)")
    parser.add_argument("--skip", default="", help="probers to leave out, comma-separated (ssh, snmp, host, dns...)")
    args = parser.parse_args()
    only, skip = set(args.only.split(",")), frozenset(filter(None, args.skip.split(",")))
    load = idle.start()
    with tempfile.TemporaryDirectory(prefix="bench-agent-memory-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        os.chmod(work, 0o755)  # sshd reads the client's key directory as root; the mail peers as their users
        peers = start_peers(stack, work)
        agent = bench_agent(work, peers, args.rounds, skip) if "agent" in only else None
        if "first-use" in only:
            first_use_costs(work, peers, skip)
        blackbox = bench_blackbox(work, peers, args.rounds) if "blackbox" in only else None
    if agent is not None:
        missed = agent["VmHWM"] - GOAL_MB
        verdict = f"missed by {missed:.1f} MB" if missed > 0 else "met"
        print(f"goal {GOAL_MB:g} MB peak RSS: {verdict} ({agent['VmHWM']:.1f} MB)")
    if agent is not None and blackbox is not None:
        print(idle.ratio_line("peak RSS, agent / blackbox_exporter", agent["VmHWM"] / blackbox["VmHWM"], load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
