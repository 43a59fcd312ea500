"""Fleet management with real processes: a collector serving templates and agents (`python -m agents.cli run`)
fetching them, applying them, caching them, and reporting what they run (docs/fleet.md)."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from foundation.fleet_protocol import config_hash
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.test_agent_run import http_get, metric_value
from tests.test_collector import wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"so-tttt-1": "fleet-tok-so-tttt-1-4d2a", "xa-a-1": "fleet-tok-xa-a-1-88e1", "xa-b-1": "fleet-tok-xa-b-1-0c7f"}
ENV = {
    "FLEET_TOKEN_SO_TTTT_1": TOKENS["so-tttt-1"], "FLEET_TOKEN_XA_A_1": TOKENS["xa-a-1"], "FLEET_TOKEN_XA_B_1": TOKENS["xa-b-1"],
    "FLEET_SNMP_COMMUNITY": "community-secret-5e1b",
}
REFRESH = 1.0


@dataclass
class Fleet:
    """Ports and paths of one test's collector and agents."""

    directory: Path
    collector_port: int
    agent_ports: dict[str, int]
    agent_fleet_url: str = ""  # what agents are configured with; default: the plain HTTP url
    agent_fleet_extra: str = ""  # more keys of the agents' fleet section
    refresh_interval: float = REFRESH  # the agents' fleet.refresh_interval, seconds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.collector_port}"


def collector_yaml(fleet: Fleet, commune_port_target: str = "router-port", xa_b_interval: str = "1s", module: str = "tcp_connect") -> str:
    """Three agencies; every agency probes its own agent port (a variable from the inventory), communes one more
    through their district's router, at an interval of their own."""
    ports = fleet.agent_ports
    return f"""\
listen: 127.0.0.1:{fleet.collector_port}
defaults: {{interval: 1s}}
agencies:
  - {{id: so-tttt, name: "Sở TTTT", district: tp-my-tho, level: department, vars: {{agent_port: "{ports['so-tttt-1']}"}}}}
  - {{id: xa-a, name: "Xã A", district: cai-be, level: commune, vars: {{agent_port: "{ports['xa-a-1']}", interval: 1s}}}}
  - {{id: xa-b, name: "Xã B", district: cai-be, level: commune, vars: {{agent_port: "{ports['xa-b-1']}", interval: "{xa_b_interval}"}}}}
districts:
  - {{id: cai-be, vars: {{router: 127.0.0.1}}}}
agents:
  - {{id: so-tttt-1, agency: so-tttt, mode: push, bearer_token: "${{FLEET_TOKEN_SO_TTTT_1}}"}}
  - {{id: xa-a-1, agency: xa-a, mode: pull, address: "127.0.0.1:{ports['xa-a-1']}", config_token: "${{FLEET_TOKEN_XA_A_1}}"}}
  - {{id: xa-b-1, agency: xa-b, mode: pull, address: "127.0.0.1:{ports['xa-b-1']}", config_token: "${{FLEET_TOKEN_XA_B_1}}"}}
templates:
  - name: province
    modules:
      {module}: {{prober: tcp, timeout: 500ms}}
    targets:
      - {{name: own-port, address: "127.0.0.1:{{{{ agency.agent_port }}}}", module: {module}}}
    snmp_auths:
      lan: {{version: 2c, community: "${{FLEET_SNMP_COMMUNITY}}"}}
  - name: communes
    select: {{levels: [commune]}}
    targets:
      - name: {commune_port_target}
        address: "{{{{ district.router }}}}:{{{{ agency.agent_port }}}}"
        module: {module}
        interval: "{{{{ agency.interval }}}}"
"""


def agent_yaml(fleet: Fleet, agent_id: str, agency: str) -> str:
    token_file = fleet.directory / f"{agent_id}.token"
    token_file.write_text(TOKENS[agent_id] + "\n", encoding="utf-8")
    return f"""\
agent: {{id: {agent_id}, agency: {agency}}}
listen: 127.0.0.1:{fleet.agent_ports[agent_id]}
defaults: {{interval: 1s, timeout: 500ms}}
fleet:
  url: {fleet.agent_fleet_url or fleet.url}
{fleet.agent_fleet_extra}  bearer_token_file: {token_file}
  refresh_interval: {fleet.refresh_interval:g}s
  timeout: 2s
  cache_file: {fleet.directory / agent_id / 'served.yml'}
targets:  # uses a served module: the first start fetches before it can run
  - {{name: local-self, address: "127.0.0.1:{fleet.agent_ports[agent_id]}", module: tcp_connect}}
"""


@contextmanager
def running_collector(fleet: Fleet, config_text: str) -> Iterator[subprocess.Popen]:
    """The collector on fleet.collector_port (plain HTTP unless config_text has tls_server_config)."""
    config = fleet.directory / "collector.yml"
    config.write_text(config_text, encoding="utf-8")
    argv = [sys.executable, "-m", "collector.cli", "run", "--config", str(config)]
    with running(argv, log_path=str(fleet.directory / "collector.log"), env=ENV, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", fleet.collector_port, proc=proc)
        yield proc


@contextmanager
def running_agent(fleet: Fleet, agent_id: str, agency: str) -> Iterator[subprocess.Popen]:
    directory = fleet.directory / agent_id
    directory.mkdir(exist_ok=True)
    config = directory / "agent.yml"
    config.write_text(agent_yaml(fleet, agent_id, agency), encoding="utf-8")
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    with running(argv, log_path=str(directory / "agent.log"), env=ENV, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", fleet.agent_ports[agent_id], proc=proc)
        yield proc


def new_fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path, free_port(), {agent: free_port() for agent in TOKENS})


def agent_metrics(fleet: Fleet, agent_id: str) -> str:
    status, text = http_get(f"http://127.0.0.1:{fleet.agent_ports[agent_id]}/metrics")
    assert status == 200
    return text


def served_hash(fleet: Fleet, agent_id: str) -> str:
    """The hash the collector serves this agent, from the collector's /metrics."""
    return served_hash_in(http_get(f"{fleet.url}/metrics")[1], agent_id)


def applied_hash(fleet: Fleet, agent_id: str) -> str | None:
    """The served config the agent runs, fetched from the collector (not from its cache)."""
    return applied_hash_in(agent_metrics(fleet, agent_id), "collector")


def fetch(
    fleet: Fleet, agent_id: str, token: str | None, headers: dict[str, str] | None = None, method: str = "GET", path: str = "config"
) -> tuple[int, str, dict[str, str]]:
    """A fetch as by hand (urllib): none of the headers an agent sends unless given."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{fleet.url}/api/v1/agents/{agent_id}/{path}", headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode(), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_an_agent_fetches_only_its_own_config_with_its_credential(tmp_path):
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)):
        own = fetch(fleet, "xa-a-1", TOKENS["xa-a-1"])
        others = fetch(fleet, "xa-a-1", TOKENS["xa-b-1"])
        anonymous = fetch(fleet, "xa-a-1", None)
        unknown = fetch(fleet, "xa-a-1", "not-a-token")
        unchanged = fetch(fleet, "xa-a-1", TOKENS["xa-a-1"], {"If-None-Match": own[2]["ETag"]})
    assert own[0] == 200 and f"address: 127.0.0.1:{fleet.agent_ports['xa-a-1']}" in own[1]
    assert own[2]["ETag"].strip('"') == config_hash(own[1])
    assert (others[0], anonymous[0], unknown[0], unchanged[0]) == (403, 401, 401, 304)
    assert unchanged[1] == ""


def test_served_config_keeps_secret_references_and_agents_never_log_tokens(tmp_path):
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)):
        status, body, _ = fetch(fleet, "so-tttt-1", TOKENS["so-tttt-1"])
        with running_agent(fleet, "so-tttt-1", "so-tttt"):
            wait_until(lambda: applied_hash(fleet, "so-tttt-1") is not None, 10, "the agent applied the served config")
            metrics = agent_metrics(fleet, "so-tttt-1")
    probe_once = [
        subprocess.run(
            [sys.executable, "-m", "agents.cli", "probe", "--once", *form, "--config", str(fleet.directory / "so-tttt-1" / "agent.yml")],
            capture_output=True, text=True, env={**os.environ, **ENV}, cwd=str(ROOT), timeout=30,
        )
        for form in ([], ["--json"])
    ]
    assert status == 200 and "community: ${FLEET_SNMP_COMMUNITY}" in body
    assert all("own-port" in run.stdout for run in probe_once)  # the served targets, from the cache
    cache = (fleet.directory / "so-tttt-1" / "served.yml").read_text()
    logs = (fleet.directory / "collector.log").read_text() + (fleet.directory / "so-tttt-1" / "agent.log").read_text()
    outputs = "".join(run.stdout + run.stderr for run in probe_once)
    for secret in ENV.values():
        assert secret not in body + cache + logs + metrics + outputs


def test_template_change_reaches_affected_agents_within_a_refresh_and_spares_the_others(tmp_path):
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)) as collector:
        with running_agent(fleet, "so-tttt-1", "so-tttt"), running_agent(fleet, "xa-a-1", "xa-a"), running_agent(fleet, "xa-b-1", "xa-b"):
            for agent in TOKENS:
                wait_until(lambda agent=agent: applied_hash(fleet, agent) == served_hash(fleet, agent), 10, f"{agent} in sync")
            before = {agent: applied_hash(fleet, agent) for agent in TOKENS}
            reload_collector(fleet, collector, collector_yaml(fleet, commune_port_target="district-router"))  # a renamed target
            changed_at = time.monotonic()
            for agent in ("xa-a-1", "xa-b-1"):
                wait_until(lambda agent=agent: applied_hash(fleet, agent) == served_hash(fleet, agent), REFRESH + 4, f"{agent} resynced")
            applied_after = time.monotonic() - changed_at
            after = {agent: applied_hash(fleet, agent) for agent in TOKENS}
            wait_until(lambda: 'target="district-router"' in agent_metrics(fleet, "xa-a-1"), 5, "the new target probed")
            probed = agent_metrics(fleet, "xa-a-1")
            # an agent reports the hash it runs with its fetches (one more right after applying)
            wait_until(lambda: collector_sees_all_current(fleet), REFRESH + 3, "the collector seeing every agent current")
    assert after["so-tttt-1"] == before["so-tttt-1"]
    assert after["xa-a-1"] != before["xa-a-1"] and after["xa-b-1"] != before["xa-b-1"]
    assert applied_after < REFRESH + 3  # one refresh interval, plus margin for a loaded machine (typically ~1 s)
    assert 'target="district-router"' in probed and 'target="own-port"' in probed and 'target="router-port"' not in probed


def reload_collector(fleet: Fleet, collector: subprocess.Popen, config_text: str) -> None:
    """Rewrite the config and SIGHUP; returns once the collector logged the outcome."""
    log = fleet.directory / "collector.log"
    logged = log.read_text().count("config reload")
    (fleet.directory / "collector.yml").write_text(config_text, encoding="utf-8")
    collector.send_signal(signal.SIGHUP)
    wait_until(lambda: log.read_text().count("config reload") > logged, 10, "the collector's reload")


def collector_sees_all_current(fleet: Fleet) -> bool:
    text = http_get(f"{fleet.url}/metrics")[1]
    return all(metric_value(text, "netmon_fleet_config_up_to_date", agent=agent) == 1.0 for agent in TOKENS)


def test_agents_restart_from_their_cache_while_the_collector_is_down_and_resync_when_it_is_back(tmp_path):
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)):
        with running_agent(fleet, "xa-a-1", "xa-a"):
            wait_until(lambda: applied_hash(fleet, "xa-a-1") is not None, 10, "the first fetch")
            first = applied_hash(fleet, "xa-a-1")
    with running_agent(fleet, "xa-a-1", "xa-a"):  # the collector is gone
        probed = lambda: all(f'probe_success{{target="{name}"' in agent_metrics(fleet, "xa-a-1") for name in ("router-port", "own-port"))
        wait_until(probed, 5, "served targets probed")
        offline = agent_metrics(fleet, "xa-a-1")
        with running_collector(fleet, collector_yaml(fleet)):
            wait_until(lambda: applied_hash(fleet, "xa-a-1") == first, REFRESH + 3, "resync with the collector")
            online = agent_metrics(fleet, "xa-a-1")
    assert applied_hash_in(offline, "cache") == first
    assert metric_value(offline, "netmon_agent_config_last_fetch_success") == 0.0
    assert metric_value(offline, "probe_success", target="own-port") == 1.0
    assert metric_value(online, "netmon_agent_config_last_fetch_success") == 1.0
    assert metric_value(online, "netmon_agent_config_last_fetch_timestamp_seconds") > time.time() - 30


def applied_hash_in(metrics: str, source: str) -> str | None:
    for line in metrics.splitlines():
        if line.startswith("netmon_agent_config_info{") and f'source="{source}"' in line:
            return line.split('hash="')[1].split('"')[0]
    return None


def test_a_reload_with_a_template_invalid_for_one_agency_keeps_serving_the_previous_configs(tmp_path):
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)) as collector:
        with running_agent(fleet, "xa-b-1", "xa-b"):
            wait_until(lambda: applied_hash(fleet, "xa-b-1") == served_hash(fleet, "xa-b-1"), 10, "xa-b-1 in sync")
            before = {agent: served_hash(fleet, agent) for agent in TOKENS}
            reload_collector(fleet, collector, collector_yaml(fleet, commune_port_target="district-router", xa_b_interval="fast"))
            time.sleep(REFRESH + 0.5)  # a refresh of the agent after the failed reload
            after = {agent: served_hash(fleet, agent) for agent in TOKENS}
            served = fetch(fleet, "xa-a-1", TOKENS["xa-a-1"])[1]
            agent_runs = applied_hash(fleet, "xa-b-1")
    assert after == before and agent_runs == before["xa-b-1"]
    assert "router-port" in served and "district-router" not in served
    log = (fleet.directory / "collector.log").read_text()
    assert "config reload failed" in log and "templates[1].targets[0].interval" in log and "agent xa-b-1" in log


def test_a_template_invalid_for_one_agency_fails_check_config_naming_agent_and_key_and_is_never_served(tmp_path):
    fleet = new_fleet(tmp_path)
    config = fleet.directory / "collector.yml"
    config.write_text(collector_yaml(fleet, xa_b_interval="fast"), encoding="utf-8")
    checked, ran = (
        subprocess.run(
            [sys.executable, "-m", "collector.cli", command, *args], capture_output=True, text=True, env={**os.environ, **ENV},
            cwd=str(ROOT), timeout=30,
        )
        for command, args in (("check-config", [str(config)]), ("run", ["--config", str(config)]))
    )
    assert checked.returncode == 2 and ran.returncode == 2
    assert "templates[1].targets[0].interval" in checked.stderr and "agent xa-b-1" in checked.stderr
    assert "invalid duration 'fast'" in checked.stderr and "xa-a-1" not in checked.stderr


def test_collector_and_agent_expose_served_and_applied_hash_version_and_last_fetch_lint_clean(tmp_path):
    from foundation import __version__
    from tests.support.require import require_binary

    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)):
        with running_agent(fleet, "xa-a-1", "xa-a"):
            wait_until(lambda: collector_sees_current(fleet, "xa-a-1"), 10, "the collector seeing xa-a-1 current")
            # the agent's own series, scraped (pull) or pushed, carry the same hash
            wait_until(lambda: 'netmon_agent_config_info{agency="xa-a"' in http_get(f"{fleet.url}/metrics")[1], 5, "a scrape")
            collector_text, agent_text = http_get(f"{fleet.url}/metrics")[1], agent_metrics(fleet, "xa-a-1")
            status_page = http_get(f"{fleet.url}/")[1]
    served = served_hash_in(collector_text, "xa-a-1")
    applied = [line for line in collector_text.splitlines() if line.startswith("netmon_fleet_config_applied_info{") and "xa-a-1" in line]
    assert applied == [
        f'netmon_fleet_config_applied_info{{agency="xa-a",agent="xa-a-1",district="cai-be",hash="{served}",level="commune",version="{__version__}"}} 1.0'
    ]
    assert metric_value(collector_text, "netmon_fleet_last_fetch_timestamp_seconds", agent="xa-a-1") > time.time() - 30
    assert metric_value(collector_text, "netmon_fleet_last_fetch_timestamp_seconds", agent="xa-b-1") == 0.0  # never fetched
    assert applied_hash_in(agent_text, "collector") == served
    scraped = f'netmon_agent_config_info{{agency="xa-a",agent="xa-a-1",district="cai-be",hash="{served}",level="commune",source="collector"}} 1.0'
    assert scraped in collector_text.splitlines()
    assert 'data-agent="xa-a-1" data-config="current"' in status_page and 'data-agent="xa-b-1" data-config="never"' in status_page
    # only the fleet families of the collector: a scraped agent's process_* series clash with the collector's own
    fleet_families = "\n".join(line for line in collector_text.splitlines() if "netmon_fleet_" in line) + "\n"
    for text in (fleet_families, agent_text):
        check = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


def collector_sees_current(fleet: Fleet, agent_id: str) -> bool:
    return metric_value(http_get(f"{fleet.url}/metrics")[1], "netmon_fleet_config_up_to_date", agent=agent_id) == 1.0


def served_hash_in(metrics: str, agent_id: str) -> str:
    for line in metrics.splitlines():
        if line.startswith("netmon_fleet_config_served_info{") and f'agent="{agent_id}"' in line:
            return line.split('hash="')[1].split('"')[0]
    raise AssertionError(f"no served hash for {agent_id}")


def test_an_agent_fetches_over_https_checking_the_collector_against_its_ca_bundle(tmp_path):
    from tests.support.certs import make_ca, make_leaf

    fleet = new_fleet(tmp_path)
    ca = make_ca(tmp_path / "pki")
    server = make_leaf(tmp_path / "pki", ca, "collector")
    fleet.agent_fleet_url = f"https://localhost:{fleet.collector_port}"
    fleet.agent_fleet_extra = f"  tls: {{ca_file: {ca.cert}}}\n"
    tls = f"tls_server_config: {{cert_file: {server.cert}, key_file: {server.key}}}\n"
    with running_collector(fleet, collector_yaml(fleet) + tls):
        with running_agent(fleet, "xa-b-1", "xa-b"):
            fetched = lambda: metric_value(agent_metrics(fleet, "xa-b-1"), "netmon_agent_config_last_fetch_success") == 1.0
            wait_until(fetched, 10, "a fetch over https")
            metrics = agent_metrics(fleet, "xa-b-1")
    assert applied_hash_in(metrics, "collector") == config_hash((fleet.directory / "xa-b-1" / "served.yml").read_text())


def test_a_served_config_that_does_not_fit_the_local_file_is_not_applied_and_the_agent_shows_stale(tmp_path):
    with agent_refusing_its_served_config(tmp_path) as (fleet, _, before):
        metrics = agent_metrics(fleet, "xa-a-1")
        collector_text = http_get(f"{fleet.url}/metrics")[1]
    assert applied_hash_in(metrics, "collector") == before != served_hash_in(collector_text, "xa-a-1")
    assert metric_value(metrics, "probe_success", target="local-self") == 1.0  # still probing with the old config
    assert metric_value(collector_text, "netmon_fleet_config_up_to_date", agent="xa-a-1") == 0.0
    log = (fleet.directory / "xa-a-1" / "agent.log").read_text()
    assert "failed, keeping the previous config" in log and "agent.yml:11: targets[0].module: unknown module 'tcp_connect'" in log


def timed_replies(port: int, paths: list[str], token: str | None = None) -> list[tuple[bytes, float]]:
    """GET each path in turn on one keep-alive connection: each whole reply (head and body), and how long it took."""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for path in paths:
            started = time.perf_counter()
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: collector\r\n{authorization}\r\n".encode())
            head = b""
            while (line := stream.readline()) not in (b"\r\n", b""):
                head += line
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            replies.append((head + b"\r\n" + stream.read(length), time.perf_counter() - started))
    return replies


def test_without_a_valid_token_known_and_unknown_agent_ids_get_the_same_401_in_the_same_time(tmp_path):
    fleet = new_fleet(tmp_path)
    paths = ["/api/v1/agents/xa-a-1/config", "/api/v1/agents/nobody-1/config"] * 300  # interleaved: load hits both alike
    with running_collector(fleet, collector_yaml(fleet)):
        anonymous = timed_replies(fleet.collector_port, paths)
        bad_token = timed_replies(fleet.collector_port, paths[:2], token="not-a-token")
        unknown_with_token = fetch(fleet, "nobody-1", TOKENS["xa-a-1"])
        not_a_config_path = fetch(fleet, "xa-a-1", TOKENS["xa-a-1"], path="other")
    known, unknown = anonymous[0::2], anonymous[1::2]
    assert {reply for reply, _ in anonymous + bad_token} == {known[0][0]}  # byte for byte one answer
    assert known[0][0].startswith(b"HTTP/1.1 401") and b"WWW-Authenticate: Bearer" in known[0][0]
    known_time, unknown_time = (statistics.median(seconds for _, seconds in replies) for replies in (known, unknown))
    assert abs(known_time - unknown_time) < 0.25 * min(known_time, unknown_time)  # before: the 404 took 40 % less
    assert (unknown_with_token[0], not_a_config_path[0]) == (403, 404)


def test_a_fetch_by_hand_changes_nothing_the_collector_records_of_an_agent(tmp_path):
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)):
        with running_agent(fleet, "xa-a-1", "xa-a"):
            wait_until(lambda: collector_sees_current(fleet, "xa-a-1"), 10, "xa-a-1 in sync")
        recorded = http_get(f"{fleet.url}/metrics")[1]
        by_hand = [fetch(fleet, agent, TOKENS[agent])[0] for agent in ("xa-a-1", "xa-b-1")]  # no X-Netmon-* headers
        collector_text, status_page = http_get(f"{fleet.url}/metrics")[1], http_get(f"{fleet.url}/")[1]
    assert by_hand == [200, 200]
    for agent in ("xa-a-1", "xa-b-1"):
        for family in ("netmon_fleet_config_up_to_date", "netmon_fleet_last_fetch_timestamp_seconds"):
            assert metric_value(collector_text, family, agent=agent) == metric_value(recorded, family, agent=agent)
    assert metric_value(collector_text, "netmon_fleet_config_up_to_date", agent="xa-a-1") == 1.0
    assert 'data-agent="xa-a-1" data-config="current"' in status_page and 'data-agent="xa-b-1" data-config="never"' in status_page


def test_if_none_match_compares_weakly_and_star_matches_and_head_answers_without_a_body(tmp_path):
    fleet = new_fleet(tmp_path)
    token = TOKENS["xa-a-1"]
    with running_collector(fleet, collector_yaml(fleet)):
        status, body, headers = fetch(fleet, "xa-a-1", token)
        etag = headers["ETag"]
        matches = [fetch(fleet, "xa-a-1", token, {"If-None-Match": tag})[0] for tag in (f"W/{etag}", "*", f'"other", W/{etag}')]
        other = fetch(fleet, "xa-a-1", token, {"If-None-Match": '"other", W/"other"'})[0]
        head = fetch(fleet, "xa-a-1", token, method="HEAD")
        head_unchanged = fetch(fleet, "xa-a-1", token, {"If-None-Match": etag}, method="HEAD")[0]
        head_anonymous = fetch(fleet, "nobody-1", None, method="HEAD")[0]
    assert status == 200 and matches == [304, 304, 304] and other == 200
    assert head[0] == 200 and head[1] == "" and head[2]["ETag"] == etag and int(head[2]["Content-Length"]) == len(body.encode())
    assert (head_unchanged, head_anonymous) == (304, 401)


@contextmanager
def agent_refusing_its_served_config(tmp_path: Path) -> Iterator[tuple[Fleet, subprocess.Popen, str]]:
    """A collector and agent xa-a-1 in sync; then the collector serves xa-a-1 a config valid on its own that its
    local file cannot use (its local target's module is no longer served) and the agent refuses it. Yields the
    fleet, the collector and the hash the agent ran before (and still runs)."""
    fleet = new_fleet(tmp_path)
    with running_collector(fleet, collector_yaml(fleet)) as collector, running_agent(fleet, "xa-a-1", "xa-a"):
        wait_until(lambda: collector_sees_current(fleet, "xa-a-1"), 10, "xa-a-1 in sync")
        before = applied_hash(fleet, "xa-a-1")
        reload_collector(fleet, collector, collector_yaml(fleet, module="tcp_check"))
        refused = lambda: metric_value(agent_metrics(fleet, "xa-a-1"), "netmon_agent_config_last_reload_successful") == 0.0
        wait_until(refused, REFRESH + 4, "the agent refusing the served config")
        yield fleet, collector, before


def test_a_refused_served_config_that_is_reverted_sets_the_last_reload_successful_again(tmp_path):
    with agent_refusing_its_served_config(tmp_path) as (fleet, collector, before):
        reload_collector(fleet, collector, collector_yaml(fleet))  # the template reverted: 304 for what it runs
        recovered = lambda: metric_value(agent_metrics(fleet, "xa-a-1"), "netmon_agent_config_last_reload_successful") == 1.0
        wait_until(recovered, REFRESH + 4, "the agent's reload metric back to 1")
        wait_until(lambda: collector_sees_current(fleet, "xa-a-1"), REFRESH + 4, "the collector seeing xa-a-1 current")
        after = applied_hash(fleet, "xa-a-1")
    assert after == before
    assert "the config it refused is withdrawn" in (fleet.directory / "xa-a-1" / "agent.log").read_text()


def test_when_the_collector_is_back_a_failed_fetch_is_retried_within_seconds_not_a_refresh_interval(tmp_path):
    fleet = new_fleet(tmp_path)
    fleet.refresh_interval = 300.0
    agent_log = fleet.directory / "xa-a-1" / "agent.log"
    with running_collector(fleet, collector_yaml(fleet)):
        with running_agent(fleet, "xa-a-1", "xa-a"):
            wait_until(lambda: applied_hash(fleet, "xa-a-1") is not None, 10, "the first fetch (and the cache)")
    with running_agent(fleet, "xa-a-1", "xa-a"):  # from the cache: its first fetch fails, and the retries after it
        wait_until(lambda: agent_log.read_text().count("cannot fetch the config") >= 3, 15, "three failed fetches")
        with running_collector(fleet, collector_yaml(fleet)):
            back = time.monotonic()
            wait_until(lambda: applied_hash(fleet, "xa-a-1") is not None, 30, "a fetch after the collector's return")
            waited = time.monotonic() - back
    assert waited < 12  # retries 1, 2, 4, 8 s apart (jittered down); without them: the next refresh, 300 s later


def test_check_config_without_a_cache_says_no_served_config_was_fetched_yet(tmp_path):
    fleet = new_fleet(tmp_path)
    config = fleet.directory / "agent.yml"
    config.write_text(agent_yaml(fleet, "xa-a-1", "xa-a"), encoding="utf-8")  # its local target uses a served module
    checked = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check-config", str(config)], capture_output=True, text=True,
        env={**os.environ, **ENV}, cwd=str(ROOT), timeout=30,
    )
    assert checked.returncode == 2
    assert "targets[0].module: unknown module 'tcp_connect'" in checked.stderr
    assert f"no served config has been fetched yet (no cache file {fleet.directory / 'xa-a-1' / 'served.yml'}" in checked.stderr
