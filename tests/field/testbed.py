"""The province in network namespaces: a data center, a WAN router and N agencies, each running a real agent.

```
 agency namespaces (fag*)                     router (fwan*)             data center (fdc*)
 ┌──────────────────────────────┐            ┌──────────┐            ┌────────────────────────────────────────┐
 │ agent (push: LAN 192.168.1.10│ uplink ─── │ portN    │            │ collector 0.0.0.0:9856                 │
 │  behind masquerade, no       │  10.251.i  │   ...    │ ── uplink ─│ Prometheus, VictoriaMetrics (loopback) │
 │  inbound; pull: :9855 open)  │  loss via  │ forward  │ 10.250.0.2 │ Postfix+Dovecot, HTTPS portal, snmpd   │
 │  egress loss / delay         │  nft, delay│ (cuts)   │            │  (loopback, DNAT'ed from the uplink)   │
 └──────────────────────────────┘  NFQUEUE   └──────────┘            └────────────────────────────────────────┘
```

The test process itself enters the data center's namespace (setns on its main thread) for the testbed's
lifetime, so the existing loopback fixtures (mail system, Prometheus, VictoriaMetrics) run there unchanged; the
data center exposes them on its uplink address by DNAT to 127.0.0.1 (`route_localnet`). Every process is
started and stopped by PID; namespaces are deleted on exit, also on failure.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.support.certs import make_ca, make_leaf
from tests.support.httpd import HttpServer, Reply
from tests.support.mailserver import PROBE, MailSystem, running_mail_system
from tests.support.netns import attach_to_router, egress_delay, netns, ns_exec, packet_loss
from tests.support.procs import running, stop, wait_for_port
from tests.support.require import require_binary, require_root
from tests.support.snmpd import add_veth_pairs, running_snmpd
from tests.support.sshd import make_key, running_sshd
from tests.support.tsdb import Peer, running_prometheus, running_victoria_metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rules"
CLONE_NEWNET = 0x40000000
DC_SUBNET = "10.250.0.0/24"
AGENCY_LAN_IP = "192.168.1.10"  # the same private LAN address in every push agency, as behind real NATs
AGENT_PORT = 9855
COLLECTOR_PORT = 9856
PUBLIC_PORTS = {"smtp": 25, "imap": 143, "portal": 443, "ssh": 22}
CORE_ROUTER_VETH_PAIRS = 24  # the core router's interfaces for snmpd: 2 per pair, plus lo
READY_TIMEOUT = 90.0
ICMP_PACKET_INTERVAL = 0.005
FETCH_SNIPPET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"

# id, Vietnamese name, district, level: a part of Tiền Giang's inventory, UTF-8 on purpose
AGENCY_INVENTORY = (
    ("so-tttt", "Sở Thông tin và Truyền thông", "tp-my-tho", "department"),
    ("so-y-te", "Sở Y tế", "tp-my-tho", "department"),
    ("ubnd-cai-be", "Ủy ban nhân dân huyện Cái Bè", "cai-be", "district"),
    ("so-tai-chinh", "Sở Tài chính", "tp-my-tho", "department"),
    ("xa-hau-my-bac-a", "Ủy ban nhân dân xã Hậu Mỹ Bắc A", "cai-be", "commune"),
    ("ubnd-cho-gao", "Ủy ban nhân dân huyện Chợ Gạo", "cho-gao", "district"),
    ("xa-binh-phuc-nhut", "Ủy ban nhân dân xã Bình Phục Nhứt", "cho-gao", "commune"),
    ("so-giao-duc", "Sở Giáo dục và Đào tạo", "tp-my-tho", "department"),
    ("phuong-1-my-tho", "Ủy ban nhân dân Phường 1", "tp-my-tho", "commune"),
    ("ubnd-go-cong", "Ủy ban nhân dân thị xã Gò Công", "go-cong", "district"),
    ("so-tu-phap", "Sở Tư pháp", "tp-my-tho", "department"),
    ("xa-my-phong", "Ủy ban nhân dân xã Mỹ Phong", "tp-my-tho", "commune"),
    ("ubnd-cai-lay", "Ủy ban nhân dân huyện Cai Lậy", "cai-lay", "district"),
    ("so-nong-nghiep", "Sở Nông nghiệp và Phát triển nông thôn", "tp-my-tho", "department"),
    ("xa-tan-phu-dong", "Ủy ban nhân dân huyện Tân Phú Đông", "tan-phu-dong", "district"),
    ("so-xay-dung", "Sở Xây dựng", "tp-my-tho", "department"),
    ("ubnd-chau-thanh", "Ủy ban nhân dân huyện Châu Thành", "chau-thanh", "district"),
    ("xa-long-hung", "Ủy ban nhân dân xã Long Hưng", "chau-thanh", "commune"),
    ("so-cong-thuong", "Sở Công Thương", "tp-my-tho", "department"),
    ("ubnd-tan-phuoc", "Ủy ban nhân dân huyện Tân Phước", "tan-phuoc", "district"),
    ("xa-thanh-my", "Ủy ban nhân dân xã Thạnh Mỹ", "tan-phuoc", "commune"),
    ("so-noi-vu", "Sở Nội vụ", "tp-my-tho", "department"),
    ("ubnd-go-cong-tay", "Ủy ban nhân dân huyện Gò Công Tây", "go-cong-tay", "district"),
    ("xa-dong-son", "Ủy ban nhân dân xã Đồng Sơn", "go-cong-tay", "commune"),
    ("so-ke-hoach", "Sở Kế hoạch và Đầu tư", "tp-my-tho", "department"),
    ("ubnd-go-cong-dong", "Ủy ban nhân dân huyện Gò Công Đông", "go-cong-dong", "district"),
    ("xa-tan-thanh", "Ủy ban nhân dân xã Tân Thành", "go-cong-dong", "commune"),
    ("so-tai-nguyen", "Sở Tài nguyên và Môi trường", "tp-my-tho", "department"),
    ("ubnd-tp-my-tho", "Ủy ban nhân dân thành phố Mỹ Tho", "tp-my-tho", "district"),
    ("xa-dao-thanh", "Ủy ban nhân dân xã Đạo Thạnh", "tp-my-tho", "commune"),
)

# (loss percent, delay ms) cycled over the agencies; phase "b" of scenario 1 shifts it by one agency
IMPAIRMENT_CYCLE = ((0, 0), (4, 10), (8, 0), (0, 20), (10, 5), (2, 0))


@dataclass(frozen=True)
class TrialParams:
    """What the CI variant and the hand-run full variant differ in."""

    agencies: int = 6
    outage_seconds: float = 20.0
    probe_interval: float = 2.0  # every agent's targets; also the collector's scrape interval
    icmp_count: int = 100  # echo requests per ICMP run, 5 ms apart: >= 1000 per agency in 10 runs
    alert_for: str = "5s"  # replaces every `for:` of the shipped rules (5m, 2m ... are for production)
    ttl_seconds: float = 6.0

    @property
    def push_agencies(self) -> int:
        return sum(1 for index in range(self.agencies) if agency_mode(index) == "push")


def agency_mode(index: int) -> str:
    """Two of every three agencies push from behind NAT; the third is scraped."""
    return "pull" if index % 3 == 2 else "push"


@dataclass(frozen=True)
class Agency:
    id: str
    name: str
    district: str
    level: str
    mode: str  # push | pull
    ns: str
    ip: str  # the uplink address: what the collector and the data center see
    router_if: str  # its port on the WAN router
    queue: Path

    @property
    def agent(self) -> str:
        return f"{self.id}-1"


@dataclass
class Impairment:
    loss_percent: int = 0
    delay_ms: float = 0.0


@dataclass
class Province:
    params: TrialParams
    workdir: Path
    router: str
    dc: str
    dc_ip: str
    agencies: list[Agency]
    prometheus: Peer
    vm: Peer
    mail: MailSystem
    collector_proc: subprocess.Popen | None = None
    impairments: dict[str, Impairment] = field(default_factory=dict)
    _impairment_stacks: dict[str, ExitStack] = field(default_factory=dict)

    # --- the collector

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{COLLECTOR_PORT}"

    def start_collector(self) -> None:
        argv = [sys.executable, "-m", "collector.cli", "run", "--config", str(self.workdir / "collector.yml")]
        log = open(self.workdir / "collector.log", "ab")
        self.collector_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        log.close()
        wait_for_port("127.0.0.1", COLLECTOR_PORT, timeout=30, proc=self.collector_proc)

    def kill_collector(self) -> None:
        """SIGKILL: no chance to sync or say goodbye; what the disk holds is all that survives."""
        assert self.collector_proc is not None
        os.kill(self.collector_proc.pid, signal.SIGKILL)
        self.collector_proc.wait(10)

    def stop_collector(self) -> None:
        if self.collector_proc is not None:
            stop(self.collector_proc)

    def collector_metrics(self) -> str:
        return http_text(f"{self.collector_url}/metrics")

    # --- agents

    def agent_metrics(self, agency: Agency) -> str:
        """The agent's /metrics, fetched inside its namespace (push agencies refuse connections from outside)."""
        fetch = [sys.executable, "-c", FETCH_SNIPPET, f"http://127.0.0.1:{AGENT_PORT}/metrics"]
        done = ns_exec(agency.ns, fetch, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"agent of {agency.id} did not answer /metrics: {done.stderr.strip()[-300:]}")
        return done.stdout

    def push_agencies(self) -> list[Agency]:
        return [agency for agency in self.agencies if agency.mode == "push"]

    def pull_agencies(self) -> list[Agency]:
        return [agency for agency in self.agencies if agency.mode == "pull"]

    # --- the network

    def impair(self, agency: Agency, loss_percent: int, delay_ms: float) -> None:
        """Replace the agency's egress impairment (loss by nftables numgen, delay by the NFQUEUE delayer)."""
        old = self._impairment_stacks.pop(agency.id, None)
        if old is not None:
            old.close()
        stack = ExitStack()
        if loss_percent:
            stack.enter_context(packet_loss(agency.ns, "uplink", loss_percent))
        if delay_ms:
            stack.enter_context(egress_delay(agency.ns, "uplink", delay_ms / 1000))
        self._impairment_stacks[agency.id] = stack
        self.impairments[agency.id] = Impairment(loss_percent, delay_ms)

    def clear_impairments(self) -> None:
        for agency in self.agencies:
            self.impair(agency, 0, 0)

    @contextmanager
    def link_cut(self, agency: Agency) -> Iterator[None]:
        """Everything the router would forward to or from the agency disappears, as when a fibre is cut."""
        table = f"cut_{agency.router_if}"
        nft(self.router, f"""
table inet {table} {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        iifname "{agency.router_if}" drop
        oifname "{agency.router_if}" drop
    }}
}}
""")
        try:
            yield
        finally:
            nft(self.router, f"delete table inet {table}")

    @contextmanager
    def push_blocked(self, agency: Agency) -> Iterator[None]:
        """Only the agency's pushes to the collector are dropped; its probes still reach the data center."""
        nft(agency.ns, f"""
table inet block_push {{
    chain out {{
        type filter hook output priority 0; policy accept;
        tcp dport {COLLECTOR_PORT} drop
    }}
}}
""")
        try:
            yield
        finally:
            nft(agency.ns, "delete table inet block_push")

    def stop_mail_server(self) -> None:
        """SIGTERM Postfix's master and Dovecot by the PIDs they wrote (their fixture still owns the cleanup)."""
        for pid_file in (self.mail.postfix_config / "queue" / "pid" / "master.pid",
                         self.mail.root / "dovecot" / "run" / "master.pid"):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _listening("127.0.0.1", self.mail.ports["smtp"]):
            time.sleep(0.1)

    # --- what the TSDBs hold

    def prometheus_query(self, query: str, at: float | None = None) -> list[dict]:
        params = {"query": query, **({"time": f"{at:.3f}"} if at is not None else {})}
        return _api(f"{self.prometheus.url}/api/v1/query?{urllib.parse.urlencode(params)}")

    def vm_samples(self, selector: str) -> dict[tuple, list[tuple[int, float]]]:
        """Raw samples in VictoriaMetrics by sorted label set (after a flush): [(timestamp ms, value)], sorted,
        one per timestamp (a batch the collector sent twice, at least once, is stored twice), stale markers left out."""
        urllib.request.urlopen(f"{self.vm.url}/internal/force_flush", timeout=10).read()
        query = urllib.parse.urlencode({"match[]": selector})
        with urllib.request.urlopen(f"{self.vm.url}/api/v1/export?{query}", timeout=60) as reply:
            lines = reply.read().decode("utf-8").splitlines()
        out: dict[tuple, dict[int, float]] = {}
        for line in lines:
            series = json.loads(line)
            key = tuple(sorted(series["metric"].items()))
            values = out.setdefault(key, {})
            # stale markers (the collector's, when an agent expired) come back as null: not samples
            values.update((ts, value) for ts, value in zip(series["timestamps"], series["values"]) if value is not None)
        return {key: sorted(samples.items()) for key, samples in out.items()}


# --- helpers ------------------------------------------------------------------------------------------------------


def http_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read().decode("utf-8")


def _api(url: str) -> list[dict]:
    with urllib.request.urlopen(url, timeout=30) as reply:
        answer = json.load(reply)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def nft(ns: str, script: str) -> None:
    ns_exec(ns, ["nft", "-f", "-"], input=script, check=True, timeout=15)


def wait_until(condition, timeout: float, what: str, step: float = 0.5):
    """The first truthy value of condition(), or an AssertionError naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


@contextmanager
def inside_namespace(ns: str) -> Iterator[None]:
    """The calling thread (and what it starts: threads, child processes) lives in ns until exit."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's own namespace failed")
    finally:
        os.close(home)
        os.close(target)


# --- building it --------------------------------------------------------------------------------------------------


def _expose_loopback_services(dc: str, ports: dict[int, int]) -> None:
    """DNAT the uplink's public ports to the loopback fixtures (route_localnet lets 127.0.0.1 be a DNAT target)."""
    for key in ("all", "uplink"):
        ns_exec(dc, ["sysctl", "-q", "-w", f"net.ipv4.conf.{key}.route_localnet=1"], check=True)
    rules = "".join(f'        iifname "uplink" tcp dport {public} dnat to 127.0.0.1:{local}\n' for public, local in ports.items())
    nft(dc, f"table ip expose {{\n    chain prerouting {{\n        type nat hook prerouting priority -100; policy accept;\n{rules}    }}\n}}\n")


def _put_behind_nat(agency_ns: str, gateway: str) -> None:
    """The agent's traffic leaves from a private LAN address, masqueraded to the uplink's; nothing gets in."""
    ns_exec(agency_ns, ["ip", "addr", "add", f"{AGENCY_LAN_IP}/32", "dev", "lo"], check=True)
    ns_exec(agency_ns, ["ip", "route", "replace", "default", "via", gateway, "src", AGENCY_LAN_IP], check=True)
    nft(agency_ns, """
table ip nat {
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        oifname "uplink" masquerade
    }
}
table inet lan_edge {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "uplink" ct state new drop
    }
}
""")


def _rules_copy(directory: Path, alert_for: str) -> Path:
    """The shipped alerting rules with every `for:` shortened, so alerts fire within a test's minutes."""
    directory.mkdir(parents=True, exist_ok=True)
    for rule_file in sorted(RULES.glob("*.yml")):
        text = re.sub(r"(?m)^(\s+for:\s*)\S+", rf"\g<1>{alert_for}", rule_file.read_text(encoding="utf-8"))
        (directory / rule_file.name).write_text(text, encoding="utf-8")
    return directory


def _prometheus_config(rules: Path) -> str:
    return f"""\
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: ["{rules}/*.yml"]
scrape_configs:
  - job_name: netmon-collector
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{COLLECTOR_PORT}"]}}]
"""


def _collector_config(bed_dir: Path, agencies: list[Agency], tokens: dict[str, Path], vm: Peer, params: TrialParams) -> str:
    lines = [
        f"listen: 0.0.0.0:{COLLECTOR_PORT}",
        f"defaults: {{interval: {params.probe_interval:g}s, ttl: {params.ttl_seconds:g}s, scrape_timeout: 1500ms}}",
        "external_labels: {province: tien-giang}",
        "agencies:",
    ]
    lines += [f'  - {{id: {a.id}, name: "{a.name}", district: {a.district}, level: {a.level}}}' for a in agencies]
    lines.append("agents:")
    for a in agencies:
        if a.mode == "push":
            lines.append(f"  - {{id: {a.agent}, agency: {a.id}, mode: push, bearer_token_file: {tokens[a.id]}}}")
        else:
            lines.append(f'  - {{id: {a.agent}, agency: {a.id}, mode: pull, address: "{a.ip}:{AGENT_PORT}"}}')
    lines += [
        "remote_write:",
        f"  - url: {vm.url}/api/v1/write",
        "    name: victoria-metrics",
        f"    queue: {{directory: {bed_dir / 'collector-queue'}, fsync_interval: 200ms}}",
        "    interval: 1s",
        "    batch_max_samples: 20000",
        "    min_backoff: 200ms",
        "    max_backoff: 2s",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class AgentFiles:
    """What the agents' configs point at: CAs, the probe mailbox's password, the SSH login."""

    portal_ca: Path
    mail_ca: Path
    mail_password: Path
    ssh_key: Path
    known_hosts: Path
    ssh_user: str


def _ssh_check(dc_ip: str, files: AgentFiles) -> str:
    """The IT department's agent also watches the mail server's disk over SSH (issue 5's checks)."""
    return f"""\
ssh_hosts:
  mail: {{address: {dc_ip}, user: {files.ssh_user}, key_file: {files.ssh_key}, known_hosts: {files.known_hosts}}}
ssh_checks:
  - {{name: mail-disk, host: mail, command: df /}}
"""


def _agent_config(agency: Agency, dc_ip: str, token: Path, files: AgentFiles, params: TrialParams) -> str:
    ssh = _ssh_check(dc_ip, files) if agency.id == AGENCY_INVENTORY[0][0] else ""
    icmp_seconds = params.icmp_count * ICMP_PACKET_INTERVAL
    push = ""
    if agency.mode == "push":
        push = f"""\
push:
  url: http://{dc_ip}:{COLLECTOR_PORT}/api/v1/write
  bearer_token_file: {token}
  interval: 1s
  self_metrics_interval: {params.probe_interval:g}s
  timeout: 3s
  min_backoff: 200ms
  max_backoff: 2s
  queue: {{directory: {agency.queue}, max_bytes: 1048576, fsync_interval: 200ms}}
"""
    interval = params.probe_interval
    return f"""\
agent: {{id: {agency.agent}, agency: {agency.id}, name: "{agency.name}"}}
listen: 0.0.0.0:{AGENT_PORT}
defaults: {{interval: {interval:g}s, timeout: {interval * 0.75:g}s}}
modules:
  icmp_dc:
    prober: icmp
    timeout: {max(icmp_seconds + 0.5, interval * 0.75):g}s
    icmp: {{count: {params.icmp_count}, packet_interval: {ICMP_PACKET_INTERVAL * 1000:g}ms}}
  portal_https:
    prober: http
    http: {{valid_status_codes: [200], tls_config: {{ca_file: {files.portal_ca}}}}}
  mail_roundtrip:
    prober: mail_roundtrip
    timeout: 4s
    mail_roundtrip:
      mail_from: {PROBE.address}
      rcpt_to: {PROBE.address}
      lost_after: 10m
      smtp: {{port: {PUBLIC_PORTS["smtp"]}, tls: starttls, tls_config: {{ca_file: {files.mail_ca}, server_name: localhost}}}}
      mailbox:
        protocol: imap
        port: {PUBLIC_PORTS["imap"]}
        tls: starttls
        tls_config: {{ca_file: {files.mail_ca}, server_name: localhost}}
        poll_interval: 100ms
        auth: {{username: {PROBE.address}, password_file: {files.mail_password}}}
targets:
  - {{name: dc-core, address: {dc_ip}, module: icmp_dc}}
  - {{name: portal, address: "https://{dc_ip}/", module: portal_https}}
  - {{name: mail-roundtrip, address: {dc_ip}, module: mail_roundtrip, interval: {max(interval * 2.5, 5):g}s}}
{ssh}{push}"""


def _require_tools() -> None:
    require_root("network namespaces, nftables, NFQUEUE, tmpfs mounts")
    for binary, package in (("ip", "iproute2"), ("ss", "iproute2"), ("nft", "nftables"), ("iptables", "iptables"),
                            ("snmpd", "snmpd"), ("prometheus", "prometheus"), ("victoria-metrics", "victoria-metrics")):
        require_binary(binary, package)


def _start_agency(cleanup: ExitStack, router: str, index: int, bed_dir: Path) -> Agency:
    agency_id, name, district, level = AGENCY_INVENTORY[index]
    ns = cleanup.enter_context(netns("fag"))
    link = attach_to_router(router, ns, f"10.251.{index}.0/24")
    mode = agency_mode(index)
    if mode == "push":
        _put_behind_nat(ns, link.gateway)
    return Agency(agency_id, name, district, level, mode, ns, link.ip, link.router_if, bed_dir / "queues" / agency_id)


def _mount_small_tmpfs(cleanup: ExitStack, directory: Path, size: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size.lower()}", "tmpfs", str(directory)], check=True, timeout=15)
    cleanup.callback(subprocess.run, ["umount", "-l", str(directory)], check=True, timeout=15)


DISK_FULL_AGENCY = 0  # its push queue lives on a small tmpfs (scenario 5)
QUEUE_TMPFS_SIZE = "1M"


@contextmanager
def field_testbed(params: TrialParams, bed_dir: Path) -> Iterator[Province]:
    """The whole province, running and reporting; torn down (processes by PID, namespaces) on exit."""
    _require_tools()
    if params.agencies > len(AGENCY_INVENTORY):
        raise ValueError(f"at most {len(AGENCY_INVENTORY)} agencies")
    with ExitStack() as cleanup:
        router = cleanup.enter_context(netns("fwan"))
        dc = cleanup.enter_context(netns("fdc"))
        dc_ip = attach_to_router(router, dc, DC_SUBNET).ip
        agencies = [_start_agency(cleanup, router, index, bed_dir) for index in range(params.agencies)]
        cleanup.enter_context(inside_namespace(dc))
        bed = _start_data_center(cleanup, params, bed_dir, router, dc, dc_ip, agencies)
        cleanup.callback(bed.clear_impairments)
        _start_agents(cleanup, bed)
        try:
            wait_until(lambda: _all_up(bed), READY_TIMEOUT, "every agent up in Prometheus")
        except AssertionError as exc:
            up = agents_up_in_collector(bed.collector_metrics())
            raise AssertionError(f"{exc}; at the collector: {up}; agents' last log lines:\n{_agent_log_tails(bed)}") from None
        yield bed


def _start_data_center(cleanup: ExitStack, params: TrialParams, bed_dir: Path, router: str, dc: str, dc_ip: str,
                       agencies: list[Agency]) -> Province:
    mail = cleanup.enter_context(running_mail_system())
    ca = make_ca(bed_dir / "pki")
    portal_cert = make_leaf(bed_dir / "pki", ca, "portal", ("portal.tinh.gov.vn", dc_ip))
    portal = cleanup.enter_context(HttpServer(tls=portal_cert, routes={"/": Reply(200, "Cổng dịch vụ công".encode())}))
    add_veth_pairs(dc, 0, CORE_ROUTER_VETH_PAIRS)
    cleanup.enter_context(running_snmpd(bed_dir / "snmpd"))  # the core router's SNMP agent, many interfaces
    ssh_key = make_key(bed_dir / "ssh" / "id_ed25519")
    sshd = cleanup.enter_context(running_sshd(bed_dir / "sshd", [ssh_key]))  # the mail server's, for SSH checks
    (bed_dir / "ssh" / "known_hosts").write_text(f"{dc_ip} {sshd.host_public_key}\n", encoding="ascii")
    _expose_loopback_services(dc, {
        PUBLIC_PORTS["smtp"]: mail.ports["smtp"], PUBLIC_PORTS["imap"]: mail.ports["imap"],
        PUBLIC_PORTS["portal"]: portal.port, PUBLIC_PORTS["ssh"]: sshd.port,
    })
    vm = cleanup.enter_context(running_victoria_metrics(bed_dir / "vm"))
    tokens = _write_tokens(bed_dir / "tokens", agencies)
    (bed_dir / "collector.yml").write_text(_collector_config(bed_dir, agencies, tokens, vm, params), encoding="utf-8")
    rules = _rules_copy(bed_dir / "rules", params.alert_for)
    prometheus = cleanup.enter_context(running_prometheus(bed_dir / "prometheus", config=_prometheus_config(rules)))
    bed = Province(params, bed_dir, router, dc, dc_ip, agencies, prometheus, vm, mail)
    bed.start_collector()
    cleanup.callback(bed.stop_collector)
    files = AgentFiles(ca.cert, mail.ca.cert, mail.password_file(PROBE), ssh_key, bed_dir / "ssh" / "known_hosts", sshd.user)
    for agency in agencies:
        token = tokens.get(agency.id, Path("/nonexistent"))
        (bed_dir / "agents" / agency.id).mkdir(parents=True, exist_ok=True)
        (bed_dir / "agents" / agency.id / "agent.yml").write_text(
            _agent_config(agency, dc_ip, token, files, params), encoding="utf-8"
        )
    disk_full = agencies[DISK_FULL_AGENCY]
    _mount_small_tmpfs(cleanup, disk_full.queue, QUEUE_TMPFS_SIZE)
    return bed


def _write_tokens(directory: Path, agencies: list[Agency]) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = {}
    for agency in agencies:
        if agency.mode == "push":
            path = directory / f"{agency.agent}.token"
            path.write_text(f"netmon-field-{secrets.token_hex(16)}\n", encoding="ascii")
            path.chmod(0o600)
            tokens[agency.id] = path
    return tokens


def _start_agents(cleanup: ExitStack, bed: Province) -> None:
    for agency in bed.agencies:
        directory = bed.workdir / "agents" / agency.id
        argv = ["ip", "netns", "exec", agency.ns, sys.executable, "-m", "agents.cli", "run", "--config", str(directory / "agent.yml")]
        cleanup.enter_context(running(argv, log_path=str(directory / "agent.log"), cwd=str(ROOT)))


def _agent_log_tails(bed: Province) -> str:
    tails = []
    for agency in bed.agencies:
        lines = (bed.workdir / "agents" / agency.id / "agent.log").read_text(errors="replace").splitlines()
        tails.append(f"{agency.id}: {lines[-1] if lines else '(empty)'}")
    return "\n".join(tails)


def _all_up(bed: Province) -> bool:
    up = bed.prometheus_query("netmon_agent_up == 1")
    return len(up) == len(bed.agencies)


def agents_up_in_collector(text: str) -> dict[str, float]:
    values = {}
    for match in re.finditer(r'^netmon_agent_up\{[^}]*agent="([^"]+)"[^}]*\} (\S+)$', text, re.M):
        values[match[1]] = float(match[2])
    return values
