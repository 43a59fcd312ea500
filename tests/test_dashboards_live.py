"""Every dashboard query against live data. Agency so-y-te runs two agents: a pull agent probing real peers (ICMP,
an HTTPS portal, dnsmasq, Postfix and Dovecot, sshd listing a second Postfix's queue, snmpd, its own host) and a
push agent polling snmpd as two old devices (one community that sees no ifXTable, one over SNMPv1) and pushing its
host's series. Both report to the real collector (whose remote_write target is down); real Prometheus scrapes it
with the project's rules. Every panel query and every variable query, with the template variables set to real
values, must return at least one series; so must every Network devices panel for each old device."""

from __future__ import annotations

import email.utils
import json
import re
import smtplib
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from tests.support.certs import make_ca, make_leaf
from tests.support.dnsmasq import running_dnsmasq
from tests.support.httpd import HttpServer, Reply
from tests.support.mailserver import PROBE, USER, running_mail_system
from tests.support.ports import free_port
from tests.support.procs import wait_for_port
from tests.support.snmpd import AGENT_ENV, running_snmpd
from tests.support.sshd import make_key, running_sshd
from tests.support.tsdb import running_prometheus
from tests.test_agent_run import http_get
from tests.test_collector import running_collector
from tests.test_collector_agents import start_agent

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILES = sorted((ROOT / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "config" / "prometheus" / "rules").glob("*.yml"))
PUSH_TOKEN = "live-dashboards-push-token-5c1e"
# one value per variable; the agency page has one target variable per prober, so no "All" is needed
VALUES = {
    "district": "tp-my-tho", "agency": "so-y-te", "device": "sw-core",
    "icmp_target": "dc-core", "http_target": "cong-tinh", "dns_target": "dns-tinh", "transaction": "dvc-journey",
    "path_target": "dc-path",
}
TARGET_BY_DASHBOARD = {"netmon-portals": "cong-tinh"}
OLD_DEVICES = ("sw-old", "sw-v1")  # no ifXTable; SNMPv1 (no Counter64)
GRAFANA_INTERVALS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}


def inventory(pull_port: int, token_file: Path) -> str:
    return (
        "agencies:\n"
        '  - {id: so-y-te, name: "Sở Y tế", district: tp-my-tho, level: department}\n'
        '  - {id: so-tttt, name: "Sở Thông tin và Truyền thông", district: tp-my-tho, level: department}\n'
        "agents:\n"
        f'  - {{id: so-y-te-1, agency: so-y-te, mode: pull, address: "127.0.0.1:{pull_port}"}}\n'
        f'  - {{id: so-y-te-2, agency: so-y-te, mode: push, bearer_token_file: "{token_file}"}}\n'
    )


def collector_extra(directory: Path) -> str:
    unused = free_port()  # the TSDB is down: remote_write metrics still exist, with network errors
    return (
        "defaults: {interval: 1s, ttl: 5s, scrape_timeout: 900ms}\n"
        f"remote_write:\n  - {{url: 'http://127.0.0.1:{unused}/api/v1/write', name: tsdb, "
        f"queue: {{directory: '{directory / 'queue'}'}}, min_backoff: 1s, max_backoff: 2s}}\n"
    )


def pull_agent_config(port: int, portal_url: str, portal_ca: Path, mail, held_mail, sshd, ssh_key: Path, wrong_password: Path,
                      dns_server: str, snmp_port: int) -> str:
    mail_tls = f"tls: starttls, tls_config: {{ca_file: '{mail.ca.cert}'}}"
    probe_auth = f"auth: {{username: '{PROBE.address}', password_file: '{mail.password_file(PROBE)}'}}"
    return f"""\
agent: {{id: so-y-te-1, agency: so-y-te}}
listen: 127.0.0.1:{port}
defaults: {{interval: 3s, timeout: 2s}}
host: {{enabled: true}}
modules:
  icmp: {{prober: icmp, icmp: {{count: 5, packet_interval: 100ms}}}}
  path: {{prober: path, path: {{count: 3, packet_interval: 100ms, max_hops: 4}}}}
  https_portal: {{prober: http, http: {{tls_config: {{ca_file: '{portal_ca}'}}}}}}
  portal_journey:
    prober: transaction
    transaction:
      tls_config: {{ca_file: '{portal_ca}'}}
      steps: [{{name: home, url: /, assert: {{body_matches: ["Cổng thông tin"]}}}}, {{name: again, url: /}}]
  smtp_starttls: {{prober: smtp, smtp: {{{mail_tls}}}}}
  imap_login: {{prober: imap, imap: {{{mail_tls}, auth: {{username: '{USER.address}', password_file: '{wrong_password}'}}}}}}
  pop3_login: {{prober: pop3, pop3: {{{mail_tls}, stat: true, {probe_auth}}}}}
  dns_a: {{prober: dns, dns: {{query_name: portal.test.lan, query_type: A}}}}
  roundtrip:
    prober: mail_roundtrip
    mail_roundtrip:
      mail_from: '{PROBE.address}'
      rcpt_to: '{PROBE.address}'
      smtp: {{{mail_tls}}}
      mailbox: {{protocol: imap, server: '{mail.address("imap")}', {mail_tls}, {probe_auth}}}
targets:
  - {{name: dc-core, address: 127.0.0.1, module: icmp}}
  - {{name: dc-path, address: 127.0.0.1, module: path}}
  - {{name: cong-tinh, address: '{portal_url}', module: https_portal}}
  - {{name: dvc-journey, address: '{portal_url}', module: portal_journey}}
  - {{name: smtp-tinh, address: '{mail.address("smtp")}', module: smtp_starttls}}
  - {{name: imap-tinh, address: '{mail.address("imap")}', module: imap_login}}
  - {{name: pop3-tinh, address: '{mail.address("pop3")}', module: pop3_login}}
  - {{name: mail-roundtrip, address: '{mail.address("smtp")}', module: roundtrip}}
  - {{name: dns-tinh, address: '{dns_server}', module: dns_a}}
ssh_hosts:
  mail: {{address: 127.0.0.1, port: {sshd.port}, user: root, key_file: '{ssh_key}', host_key_fingerprint: '{sshd.host_key_fingerprint}'}}
ssh_checks:
  - {{name: mail-queue, host: mail, command: 'postqueue_json {held_mail.postfix_config}'}}
  - {{name: mail-disk, host: mail, command: 'df /'}}
snmp_auths:
  lan: {{version: 2c, community: "${{SNMPD_COMMUNITY}}"}}
snmp_devices:
  - {{name: sw-core, address: 127.0.0.1, port: {snmp_port}, auth: lan, interval: 2s, timeout: 1s}}
"""


def push_agent_config(port: int, collector_port: int, token_file: Path, queue: Path, snmp_port: int) -> str:
    return f"""\
agent: {{id: so-y-te-2, agency: so-y-te}}
listen: 127.0.0.1:{port}
defaults: {{interval: 1s, timeout: 500ms}}
host: {{enabled: true}}
modules:
  tcp_connect: {{prober: tcp}}
targets:
  - {{name: self-port, address: "127.0.0.1:{port}", module: tcp_connect}}
push:
  url: http://127.0.0.1:{collector_port}/api/v1/write
  bearer_token_file: {token_file}
  interval: 1s
  self_metrics_interval: 1s
  queue: {{directory: '{queue}'}}
snmp_auths:
  no_ifx: {{version: 2c, community: "${{SNMPD_NO_IFX_COMMUNITY}}"}}
  v1: {{version: "1", community: "${{SNMPD_COMMUNITY}}"}}
snmp_devices:
  - {{name: sw-old, address: 127.0.0.1, port: {snmp_port}, auth: no_ifx, interval: 2s, timeout: 1s}}
  - {{name: sw-v1, address: 127.0.0.1, port: {snmp_port}, auth: v1, interval: 2s, timeout: 1s}}
"""


def prometheus_config(collector_port: int) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{
            "job_name": "netmon-collector", "honor_labels": True, "scrape_timeout": "1s",
            "static_configs": [{"targets": [f"127.0.0.1:{collector_port}"]}],
        }],
    })


def query(prometheus_url: str, expr: str) -> list[dict]:
    status, text = http_get(f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, f"{expr}: {text}"
    return json.loads(text)["data"]["result"]


def substituted(expr: str, values: dict[str, str]) -> str:
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$(\w+)", lambda match: values[match.group(1)], expr)


def dashboard_queries(values: dict[str, str] = VALUES, uids: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(dashboard uid, what, PromQL) for every panel target and every variable (of the dashboards `uids`, default
    all), variables set to real values."""
    found = []
    for path in DASHBOARD_FILES:
        board = json.loads(path.read_text(encoding="utf-8"))
        if uids and board["uid"] not in uids:
            continue
        board_values = {**values, "target": TARGET_BY_DASHBOARD.get(board["uid"], "")}
        for panel in board["panels"]:
            found += [(board["uid"], panel["title"], substituted(target["expr"], board_values)) for target in panel["targets"]]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                selector = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"]).group(1)
                found.append((board["uid"], f"variable {variable['name']}", substituted(selector, board_values)))
    return found


def empty_queries(prometheus_url: str, queries: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [entry for entry in queries if not query(prometheus_url, entry[2])]


def wait_for_series(prometheus_url: str, queries: list[tuple[str, str, str]], timeout: float = 60.0) -> list[tuple[str, str, str]]:
    """The queries still empty after waiting up to `timeout` for all of them to return a series."""
    deadline = time.monotonic() + timeout
    missing = empty_queries(prometheus_url, queries)
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        missing = empty_queries(prometheus_url, missing)
    return missing


def queue_one_message(mail) -> None:
    """One message accepted and held back (defer_transports), so the queue panel shows a depth above zero."""
    with smtplib.SMTP("127.0.0.1", mail.ports["smtp"], timeout=10) as client:
        client.sendmail(USER.address, [PROBE.address], f"From: <{USER.address}>\r\nSubject: queued\r\n\r\nhello\r\n")


def portal_server(directory: Path) -> tuple[HttpServer, Path]:
    ca = make_ca(directory)
    last_modified = email.utils.formatdate(time.time() - 3 * 86400, usegmt=True)
    server = HttpServer(tls=make_leaf(directory, ca, "portal"), routes={"/": Reply(body="<html>Cổng thông tin</html>".encode(), headers=(("Last-Modified", last_modified),))})
    return server, ca.cert


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory) -> str:
    """The whole live setup, started once for this module's tests; Prometheus' URL."""
    tmp_path = tmp_path_factory.mktemp("live")
    pull_port, push_port = free_port(), free_port()
    token_file = tmp_path / "push.token"
    token_file.write_text(PUSH_TOKEN + "\n", encoding="utf-8")
    wrong_password = tmp_path / "wrong-password"
    wrong_password.write_text("not-the-password\n", encoding="utf-8")
    ssh_key = make_key(tmp_path / "ssh-key")
    with ExitStack() as stack:
        environment = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in AGENT_ENV.items():
            environment.setenv(name, value)  # the agents read the communities from the environment
        mail = stack.enter_context(running_mail_system())
        held_mail = stack.enter_context(running_mail_system(defer_delivery=True))
        queue_one_message(held_mail)
        snmpd = stack.enter_context(running_snmpd(tmp_path / "snmpd"))
        sshd = stack.enter_context(running_sshd(tmp_path / "sshd", [ssh_key]))
        dns = stack.enter_context(running_dnsmasq(tmp_path / "dnsmasq", ["host-record=portal.test.lan,127.0.0.1"]))
        server, portal_ca = portal_server(tmp_path / "portal")
        portal = stack.enter_context(server)
        collector = stack.enter_context(
            running_collector(tmp_path / "collector", collector_extra(tmp_path / "collector"), inventory=inventory(pull_port, token_file))
        )
        prometheus = stack.enter_context(running_prometheus(tmp_path / "prometheus", config=prometheus_config(collector.port)))
        pull_context, _ = start_agent(
            tmp_path / "pull-agent",
            pull_agent_config(pull_port, portal.url("/"), portal_ca, mail, held_mail, sshd, ssh_key, wrong_password,
                              dns.address, snmpd.port),
        )
        pull_agent = stack.enter_context(pull_context)
        push_context, _ = start_agent(tmp_path / "push-agent", push_agent_config(push_port, collector.port, token_file, tmp_path / "push-queue", snmpd.port))
        push_agent = stack.enter_context(push_context)
        wait_for_port("127.0.0.1", pull_port, proc=pull_agent)
        wait_for_port("127.0.0.1", push_port, proc=push_agent)
        yield prometheus.url


def test_every_dashboard_query_returns_a_series_from_live_data(prometheus_url: str) -> None:
    missing = wait_for_series(prometheus_url, dashboard_queries())
    assert missing == [], "\n".join(map(str, missing))


@pytest.mark.parametrize("device", OLD_DEVICES)
def test_every_device_panel_shows_an_old_device_from_its_32_bit_counters(prometheus_url: str, device: str) -> None:
    """Traffic and utilization of a switch without ifXTable (ifInOctets, ifSpeed) or polled over v1 (ifInOctets,
    ifHighSpeed): the same panels, falling back per interface."""
    missing = wait_for_series(prometheus_url, dashboard_queries({**VALUES, "device": device}, ("netmon-devices",)))
    assert missing == [], "\n".join(map(str, missing))
    assert query(prometheus_url, f'ifHCInOctets{{target="{device}"}}') == []


def test_snmp_series_of_a_scraped_agent_keep_snmp_exporter_names(prometheus_url: str) -> None:
    """The collector scrapes the pull agent's SNMP counters (typed gauge) without renaming them `_total`."""
    assert wait_for_series(prometheus_url, [("", "pulled", 'ifHCInOctets{agent="so-y-te-1", target="sw-core"}')]) == []
    assert query(prometheus_url, '{__name__=~"ifHC.*_total"}') == []


def test_host_series_of_a_pushing_agent_reach_prometheus(prometheus_url: str) -> None:
    assert wait_for_series(prometheus_url, [("", "pushed", 'node_cpu_seconds_total{agent="so-y-te-2"}')]) == []
