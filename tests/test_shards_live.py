"""Sharded collectors with real processes: agents find their shard from the shard map that `netmon-collector
shard` writes (an agent sent to another shard is told where the shards are), and two shards' data in one real
VictoriaMetrics and one real Prometheus (scraping every shard with the generated job, the project's rules loaded)
give the rules and dashboards the same per-agency answers as one collector would: no series twice, none missing."""

from __future__ import annotations

import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import yaml

from foundation import remote_write as rw
from tests.support.ports import free_port
from tests.support.shards import Inventory, ShardPlan, running_shards, shard_inventory, write_inventory
from tests.support.tsdb import query_prometheus, running_prometheus, running_victoria_metrics, victoria_metrics_export
from tests.test_agent_run import http_get, metric_value
from tests.test_collector import push, wait_until
from tests.test_collector_agents import start_agent
from tests.test_dashboards_live import RULE_FILES, dashboard_queries

# --- agents learn their shard


def agent_yaml(directory: Path, agent: str, agency: str, port: int, shard_url: str, token: str) -> str:
    """An agent configured from the shard map: push.url and fleet.url are its shard's."""
    token_file = directory / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    return f"""\
agent: {{id: {agent}, agency: {agency}}}
listen: 127.0.0.1:{port}
defaults: {{interval: 1s, timeout: 500ms}}
modules:
  tcp_connect: {{prober: tcp}}
targets:
  - {{name: self-port, address: "127.0.0.1:{port}", module: tcp_connect}}
push:
  url: {shard_url}/api/v1/write
  bearer_token_file: {token_file}
  interval: 1s
  min_backoff: 200ms
  max_backoff: 1s
  queue: {{directory: {directory / 'queue'}, fsync_interval: 200ms}}
fleet:
  url: {shard_url}
  bearer_token_file: {token_file}
  refresh_interval: 1s
  timeout: 2s
  cache_file: {directory / 'served.yml'}
"""


def shard_metrics(plan: ShardPlan, name: str) -> str:
    status, text = http_get(f"{plan.urls[name]}/metrics")
    assert status == 200
    return text


def test_agents_push_to_the_shard_the_map_names_and_a_misdirected_one_is_told_where_the_shards_are(tmp_path):
    agencies = [("so-a", "d-1"), ("xa-b", "d-2"), ("xa-c", "d-2")]
    inventory = write_inventory(tmp_path / "inventory.yml", agencies, interval="1s", ttl="3s")
    plan = shard_inventory(inventory, tmp_path / "shards", 2, "district")
    other = {plan.names[0]: plan.names[1], plan.names[1]: plan.names[0]}
    misdirected = "xa-c-1"  # configured with the other shard's URLs, as after a copy-paste from a neighbour
    with ExitStack() as stack:
        stack.enter_context(running_shards(plan, inventory.env))
        logs = {}
        for agent, agency in inventory.agency_of.items():
            shard = plan.agents[agent] if agent != misdirected else other[plan.agents[agent]]
            directory = tmp_path / agent
            directory.mkdir()
            config = agent_yaml(directory, agent, agency, free_port(), plan.urls[shard], inventory.tokens[agent])
            process, logs[agent] = start_agent(directory, config)
            stack.enter_context(process)
        for agent in ("so-a-1", "xa-b-1"):
            wait_until(lambda agent=agent: metric_value(shard_metrics(plan, plan.agents[agent]), "netmon_agent_up", agent=agent) == 1, 30, f"{agent} up")
        wait_until(lambda: "this is" in logs[misdirected].read_text(), 30, "the misdirected agent's fetch refused")
        own, wrong = plan.agents[misdirected], other[plan.agents[misdirected]]
        assert metric_value(shard_metrics(plan, own), "netmon_agent_up", agent=misdirected) == 0
        assert metric_value(shard_metrics(plan, wrong), "netmon_agent_up", agent=misdirected) is None
        for agent in ("so-a-1", "xa-b-1"):  # each agent is known to its own shard only
            assert metric_value(shard_metrics(plan, other[plan.agents[agent]]), "netmon_agent_up", agent=agent) is None
    refusal = next(line for line in logs[misdirected].read_text().splitlines() if "this is" in line)
    assert "answered 401" in refusal and f"this is {wrong} of 2" in refusal
    assert all(f"{name} {url}" in refusal for name, url in plan.urls.items())
    assert inventory.tokens[misdirected] not in logs[misdirected].read_text()


# --- rules and dashboards over two shards

AGENCIES = [(f"xa-{number}", f"d-{number % 3}") for number in range(8)]
SILENT = "xa-3-1"  # never pushes: down from the start
FAILING_PORTAL = "xa-5"  # its portal probe fails


def rule_expr(alert: str) -> str:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alert:
                    return rule["expr"]
    raise KeyError(alert)


def agent_series(agency: str, timestamp_ms: int) -> list[rw.Series]:
    portal_up = 0.0 if agency == FAILING_PORTAL else 1.0
    return [
        rw.make_series("probe_success", {"target": "dc", "module": "icmp"}, [(timestamp_ms, 1.0)]),
        rw.make_series("probe_icmp_rtt_avg_seconds", {"target": "dc", "module": "icmp"}, [(timestamp_ms, 0.004)]),
        rw.make_series("probe_success", {"target": "cong-tinh", "module": "http_2xx"}, [(timestamp_ms, portal_up)]),
        rw.make_series("probe_http_status_code", {"target": "cong-tinh", "module": "http_2xx"}, [(timestamp_ms, 200 if portal_up else 503)]),
    ]


def push_every_second(plan: ShardPlan, inventory: Inventory, stop: threading.Event) -> None:
    while not stop.is_set():
        now = int(time.time() * 1000)
        for agent, agency in inventory.agency_of.items():
            if agent != SILENT:
                status, text, _ = push(plan.urls[plan.agents[agent]], rw.encode(agent_series(agency, now)), inventory.tokens[agent])
                assert status == 204, text
        stop.wait(1.0)


def prometheus_yaml(plan: ShardPlan) -> str:
    job = yaml.safe_load((plan.directory / "prometheus-shards.yml").read_text(encoding="utf-8"))["scrape_configs"][0]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(path) for path in RULE_FILES], "scrape_configs": [job]}
    return yaml.safe_dump(config)


def by_agency(result: list[dict]) -> dict[str, float]:
    """agency -> value; an agency twice is a duplicate across shards."""
    out: dict[str, float] = {}
    for series in result:
        agency = series["metric"]["agency"]
        assert agency not in out, f"agency {agency} twice: {result}"
        out[agency] = float(series["value"][1])
    return out


def province_overview(district: str = ".*") -> dict[str, str]:
    return {title: expr for uid, title, expr in dashboard_queries({"district": district}, ("netmon-province",))}


def test_rules_and_dashboards_give_per_agency_answers_over_two_shards(tmp_path):
    vm_dir = tmp_path / "vm"
    with running_victoria_metrics(vm_dir) as vm:
        extra = f"remote_write:\n  - url: {vm.url}/api/v1/write\n    queue: {{directory: {tmp_path / 'forward'}}}\n    interval: 1s\n"
        inventory = write_inventory(tmp_path / "inventory.yml", AGENCIES, extra, interval="1s", ttl="5s")
        plan = shard_inventory(inventory, tmp_path / "shards", 2, "hash")
        assert len(set(plan.agents.values())) == 2  # both shards own agencies
        stop = threading.Event()
        with running_shards(plan, inventory.env), running_prometheus(tmp_path / "prometheus", config=prometheus_yaml(plan)) as prometheus:
            pusher = threading.Thread(target=push_every_second, args=(plan, inventory, stop), daemon=True)
            pusher.start()
            try:
                wait_until(lambda: len(query_prometheus(prometheus, "agency:netmon_agent_up:max")) == len(AGENCIES), 60, "every agency recorded")
                wait_until(lambda: len(query_prometheus(prometheus, "probe_success")) == 2 * (len(AGENCIES) - 1), 30, "every pushed series scraped")
                time.sleep(2)  # a few evaluations over all of it
                answers = {name: query_prometheus(prometheus, expr) for name, expr in queries().items()}
            finally:
                stop.set()
                pusher.join(10)
        urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=10).read()
        stored = victoria_metrics_export(vm, '{__name__="probe_success"}')
    silent_agency = inventory.agency_of[SILENT]
    assert by_agency(answers["up"]) == {agency: 0.0 if agency == silent_agency else 1.0 for agency, _ in AGENCIES}
    assert by_agency(answers["offline"]) == {silent_agency: 0.0}
    assert [(s["metric"]["agency"], s["metric"]["target"]) for s in answers["portal_down"]] == [(FAILING_PORTAL, "cong-tinh")]
    assert answers["collector_down"] == []
    assert sorted(s["metric"]["shard"] for s in answers["collectors"]) == plan.names
    assert [float(s["value"][1]) for s in answers["panel_down"]] == [1.0]
    assert [float(s["value"][1]) for s in answers["panel_up"]] == [len(AGENCIES) - 1.0]
    assert set(by_agency(answers["panel_table"])) == {agency for agency, _ in AGENCIES}
    assert set(by_agency(answers["panel_rtt"])) == {agency for agency, _ in AGENCIES} - {silent_agency}
    assert by_agency(answers["shards_per_agency"]) == {agency: 1.0 for agency, _ in AGENCIES if agency != silent_agency}
    per_agency_in_vm: dict[str, set[tuple[str, str]]] = {}
    for labels, samples in stored.items():
        named = dict(labels)
        per_agency_in_vm.setdefault(named["agency"], set()).add((named["target"], named["shard"]))
        assert samples, labels
    for agent, agency in inventory.agency_of.items():
        expected = set() if agent == SILENT else {("dc", plan.agents[agent]), ("cong-tinh", plan.agents[agent])}
        assert per_agency_in_vm.get(agency, set()) == expected, (agency, per_agency_in_vm.get(agency))


def panel(panels: dict[str, str], start: str, contains: str = "") -> str:
    return next(expr for expr in panels.values() if expr.startswith(start) and contains in expr)


def queries() -> dict[str, str]:
    """The rules' key expressions (without their `for`) and province-overview panels, all districts selected."""
    panels = province_overview()
    return {
        "up": "agency:netmon_agent_up:max",
        "offline": rule_expr("NetmonAgencyOffline"),
        "portal_down": rule_expr("NetmonPortalDown"),
        "collector_down": rule_expr("NetmonCollectorDown"),
        "collectors": 'up{job="netmon-collector", agent=""}',
        "panel_down": panel(panels, "count(agency:netmon_agent_up:max", "== 0)"),
        "panel_up": panel(panels, "count(agency:netmon_agent_up:max", "== 1)"),
        "panel_table": panel(panels, "agency:netmon_agent_up:max{", "group_left"),
        "panel_rtt": panel(panels, "max by (agency, name, district, level) (probe_icmp_rtt_avg_seconds"),
        "shards_per_agency": "count by (agency) (count by (agency, shard) (probe_success))",
    }
