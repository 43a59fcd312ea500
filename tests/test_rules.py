"""Alert and recording rules, their unit tests, and the example Prometheus and Alertmanager configs, checked by
the real promtool and amtool; and one alert end to end: a stopped agent, the real collector, Prometheus and
Alertmanager, and a webhook receiver run by the test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.support.ports import free_port
from tests.support.procs import running, stop, wait_for_port
from tests.support.require import require_binary
from tests.support.tsdb import running_prometheus, wait_http_ok
from tests.test_agent_run import http_get
from tests.test_collector import running_collector, wait_until
from tests.test_collector_agents import agent_yaml, start_agent

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "config" / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMETHEUS_EXAMPLE = ROOT / "config" / "prometheus" / "prometheus.example.yml"
ALERTMANAGER_EXAMPLE = ROOT / "config" / "alertmanager.example.yml"
GENERATOR = ROOT / "config" / "prometheus" / "generate.py"
DEFAULT_RUNBOOK_BASE = "https://git.stttt.tiengiang.gov.vn/netmon/egov-netmon/-/blob/main/docs/runbooks.md"
ANNOTATIONS = {"summary", "description", "summary_en", "description_en", "runbook_url"}
VIETNAMESE_LETTERS = re.compile("[ăâđêôơưĂÂĐÊÔƠƯàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ]")
# Series Prometheus makes itself, not the agent or the collector.
PROMETHEUS_OWN_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    return require_binary("promtool", "prometheus")


def amtool() -> str:
    return require_binary("amtool", "prometheus-alertmanager")


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def alerting_rules() -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_test_cases() -> list[dict]:
    return [
        case
        for path in RULE_TEST_FILES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors of the `#` headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def generate(out_dir: Path, *options: str) -> dict[str, str]:
    subprocess.run([sys.executable, str(GENERATOR), *options, str(out_dir)], check=True, timeout=60)
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(out_dir.glob("*.yml"))}


def test_committed_rules_are_what_the_generator_writes_for_the_default_runbook_base(tmp_path: Path) -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in RULE_FILES}
    assert generate(tmp_path) == committed


def test_the_runbook_base_url_is_a_parameter_of_the_generator(tmp_path: Path) -> None:
    base = "https://wiki.so-tttt.example/netmon/runbooks.html"
    generated = generate(tmp_path, "--runbook-base", base)
    urls = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for text in generated.values()
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert urls and all(url == f"{base}#{alert.lower()}" for alert, url in urls.items())
    committed = {path.name: path.read_text(encoding="utf-8") for path in RULE_FILES}
    assert {name: text.replace(base, DEFAULT_RUNBOOK_BASE) for name, text in generated.items()} == committed


def test_rule_files_pass_promtool_check_rules() -> None:
    result = run([promtool(), "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(RULE_FILES) >= 8


def test_rule_unit_tests_pass_promtool_test_rules() -> None:
    result = run([promtool(), "test", "rules", *map(str, RULE_TEST_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TEST_FILES)


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    cases = alert_test_cases()
    untested = {
        rule["alert"]: (fires, quiet)
        for rule in alerting_rules()
        for fires in [any(c["alertname"] == rule["alert"] and c["exp_alerts"] for c in cases)]
        for quiet in [any(c["alertname"] == rule["alert"] and not c["exp_alerts"] for c in cases)]
        if not (fires and quiet)
    }
    assert untested == {}, "(fires, does not fire) tested"


def test_every_firing_unit_test_checks_the_rendered_annotations() -> None:
    unchecked = [
        case["alertname"]
        for case in alert_test_cases()
        for expected in case["exp_alerts"]
        if set(expected.get("exp_annotations", {})) != ANNOTATIONS
    ]
    assert unchecked == []


def test_every_alert_has_for_severity_scope_and_its_annotations_in_both_languages() -> None:
    incomplete = [
        rule["alert"]
        for rule in alerting_rules()
        if "for" not in rule
        or rule["labels"].get("severity") not in {"warning", "critical"}
        or rule["labels"].get("scope") not in {"agency", "agent", "target", "collector"}
        or set(rule["annotations"]) != ANNOTATIONS
    ]
    assert incomplete == []


def test_summaries_and_descriptions_are_vietnamese_with_the_english_beside() -> None:
    untranslated = [
        (rule["alert"], key)
        for rule in alerting_rules()
        for key in ("summary", "description")
        if rule["annotations"][key] == rule["annotations"][f"{key}_en"]
        or not VIETNAMESE_LETTERS.search(rule["annotations"][key])
    ]
    assert untranslated == []


def test_every_agency_alert_joins_and_names_the_agency() -> None:
    unnamed = [
        rule["alert"]
        for rule in alerting_rules()
        if rule["labels"]["scope"] != "collector"
        and (
            "group_left (name) netmon_agency_info" not in rule["expr"]
            or "{{ $labels.name }}" not in rule["annotations"]["description"]
            or "{{ $labels.name }}" not in rule["annotations"]["description_en"]
        )
    ]
    assert unnamed == []


def test_every_runbook_url_links_to_the_section_of_its_alert_in_the_runbooks() -> None:
    anchors = markdown_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for rule in alerting_rules():
        base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (base, anchor) == (DEFAULT_RUNBOOK_BASE, rule["alert"].lower())
        assert anchor in anchors


def test_every_metric_the_unit_tests_feed_is_emitted_by_the_agent_or_the_collector() -> None:
    """The unit tests prove the rules fire on these names, so none of them may be invented."""
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for pattern in ("agents/**/*.py", "agents/**/*.yml", "collector/**/*.py", "docs/*.md")
        for path in ROOT.glob(pattern)
        if path.name != "runbooks.md"
    )
    fed = {
        re.match(r"[A-Za-z_:][\w:]*", series["series"]).group(0)
        for path in RULE_TEST_FILES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for series in group["input_series"]
    }
    base_names = {re.sub("|".join(f"{s}$" for s in HISTOGRAM_SUFFIXES), "", name) for name in fed}
    unknown = {name for name in base_names - PROMETHEUS_OWN_SERIES if not re.search(rf"\b{name}\b", sources)}
    assert unknown == set()


def test_prometheus_example_config_passes_promtool_check_config() -> None:
    result = run([promtool(), "check", "config", str(PROMETHEUS_EXAMPLE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_prometheus_example_scrapes_the_collector_with_honor_labels() -> None:
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    collector_jobs = [job for job in config["scrape_configs"] if job["job_name"] == "netmon-collector"]
    assert [job.get("honor_labels") for job in collector_jobs] == [True]


def test_alertmanager_example_config_passes_amtool_check_config() -> None:
    result = run([amtool(), "check-config", str(ALERTMANAGER_EXAMPLE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout and "1 templates" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "district=cai-be"], "oncall-chat,district-cai-be-email"),
        (["severity=warning", "district=cai-be"], "district-cai-be-email"),
        (["severity=warning", "district=cho-gao"], "district-cho-gao-email"),
        (["severity=critical", "scope=collector"], "oncall-chat,platform-email"),
        (["severity=warning", "district=unknown-district"], "it-center-email"),
    ],
)
def test_alertmanager_example_routes_by_severity_and_district(labels: list[str], receivers: str) -> None:
    result = run([amtool(), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}", *labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


# --- one alert end to end

AGENCY = "so-y-te"
AGENCY_NAME = "Sở Y tế"
SHORT_FOR = "3s"  # the rule's `for: 2m`, shortened so the test waits seconds; expression and templates unchanged


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server that keeps every JSON body Alertmanager posts to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alertmanager", received
    finally:
        server.shutdown()
        server.server_close()


def example_alertmanager_config() -> dict:
    """The example config as data, its template globs made absolute (they are relative to the example's directory)."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    config["templates"] = [str(ALERTMANAGER_EXAMPLE.parent / glob) for glob in config["templates"]]
    return config


def alertmanager_config(webhook_url: str) -> str:
    """The example config, with the chat bridge replaced by the test's receiver and no waiting before sending."""
    config = example_alertmanager_config()
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{free_port()}"  # nothing listens: e-mail fails fast
    for route in config["route"]["routes"]:
        route["group_wait"] = "1s"
    [chat] = [receiver for receiver in config["receivers"] if receiver["name"] == "oncall-chat"]
    chat["webhook_configs"][0]["url"] = webhook_url
    return yaml.safe_dump(config, allow_unicode=True)


@contextmanager
def running_alertmanager(directory: Path, config_text: str) -> Iterator[str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(config_text, encoding="utf-8")
    port = free_port()
    argv = [
        require_binary("prometheus-alertmanager"), f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ]
    with running(argv, log_path=str(directory / "alertmanager.log")):
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready")
        yield f"127.0.0.1:{port}"


def prometheus_config(directory: Path, collector_port: int, alertmanager: str) -> str:
    """The example config, scraping the test's collector every second with the agency rules (short `for`)."""
    directory.mkdir(parents=True, exist_ok=True)
    rules = directory / "agency.yml"
    rules.write_text((RULES_DIR / "agency.yml").read_text(encoding="utf-8").replace("for: 2m", f"for: {SHORT_FOR}"), encoding="utf-8")
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "netmon-collector"]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [f"127.0.0.1:{collector_port}"]}])
    config["scrape_configs"] = [job]
    return yaml.safe_dump(config, allow_unicode=True)


def firing_offline_alerts(received: list[dict]) -> list[dict]:
    return [
        {"receiver": body["receiver"], **alert}
        for body in received
        for alert in body["alerts"]
        if alert["status"] == "firing" and alert["labels"]["alertname"] == "NetmonAgencyOffline"
    ]


def query(prometheus_url: str, expr: str) -> list[dict]:
    status, text = http_get(f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, text
    return json.loads(text)["data"]["result"]


def test_a_stopped_agent_reaches_the_webhook_as_agency_offline_with_its_vietnamese_name(tmp_path: Path) -> None:
    agent_port = free_port()
    inventory = (
        f'agencies:\n  - {{id: {AGENCY}, name: "{AGENCY_NAME}", district: tp-my-tho, level: department}}\n'
        f'agents:\n  - {{id: so-y-te-1, agency: {AGENCY}, mode: pull, address: "127.0.0.1:{agent_port}"}}\n'
    )
    agent_context, _ = start_agent(tmp_path / "agent", agent_yaml(agent_port, "so-y-te-1", AGENCY))
    with (
        webhook_receiver() as (webhook_url, received),
        running_alertmanager(tmp_path / "alertmanager", alertmanager_config(webhook_url)) as alertmanager,
        running_collector(tmp_path / "collector", "defaults: {interval: 1s, ttl: 3s, scrape_timeout: 500ms}\n", inventory=inventory) as collector,
        running_prometheus(tmp_path / "prometheus", config=prometheus_config(tmp_path / "rules", collector.port, alertmanager)) as prometheus,
        agent_context as agent,
    ):
        wait_for_port("127.0.0.1", agent_port, proc=agent)
        wait_until(lambda: query(prometheus.url, f'netmon_agent_up{{agency="{AGENCY}"}} == 1'), 20, "Prometheus to see the agent up")
        wait_until(lambda: query(prometheus.url, f'agency:netmon_agent_up:max{{agency="{AGENCY}"}} == 1'), 10, "the recording rule")
        assert query(prometheus.url, 'ALERTS{alertname="NetmonAgencyOffline"}') == []
        stop(agent)
        wait_until(lambda: firing_offline_alerts(received), 30, "the offline alert at the webhook")
    [alert] = firing_offline_alerts(received)
    assert alert["receiver"] == "oncall-chat"
    assert alert["labels"] == {
        "alertname": "NetmonAgencyOffline", "agency": AGENCY, "name": AGENCY_NAME, "district": "tp-my-tho",
        "level": "department", "severity": "critical", "scope": "agency", "province": "tien-giang",
    }
    assert alert["annotations"]["summary"] == f"Cơ quan mất kết nối: {AGENCY_NAME}"
    assert alert["annotations"]["description"].startswith(f"Không agent nào của {AGENCY_NAME} ({AGENCY}, huyện tp-my-tho)")
    assert alert["annotations"]["summary_en"] == f"Agency offline: {AGENCY_NAME}"
    assert alert["annotations"]["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE}#netmonagencyoffline"
