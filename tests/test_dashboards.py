"""The Grafana dashboards: committed JSON equals the generator's output, has the shape Grafana's dashboard schema
asks for, and every panel and variable query is PromQL that promtool parses, over metric names that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.require import require_binary

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
RULES_DIR = ROOT / "config" / "prometheus" / "rules"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "le", "inf", "nan"}
PROMETHEUS_OWN_SERIES = {"up"}
EXPECTED_TITLES = {
    "Province overview (Tổng quan toàn tỉnh)", "Agency detail (Chi tiết cơ quan)", "Mail system (Hệ thống thư điện tử)",
    "Network devices (Thiết bị mạng)", "Portals and services (Cổng thông tin và dịch vụ)", "Collector health (Bộ thu thập)",
}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def panels() -> list[tuple[str, dict]]:
    return [(path.name, panel) for path in DASHBOARD_FILES for panel in load(path)["panels"]]


def query_variables() -> list[tuple[str, dict]]:
    return [
        (path.name, variable)
        for path in DASHBOARD_FILES
        for variable in load(path)["templating"]["list"]
        if variable["type"] == "query"
    ]


def panel_exprs() -> list[str]:
    return [target["expr"] for _, panel in panels() for target in panel["targets"]]


def variable_selectors() -> list[str]:
    """`label_values(SELECTOR, label)` is Grafana's, not PromQL; its selector is."""
    return [re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"]).group(1) for _, variable in query_variables()]


def as_promql(expr: str) -> str:
    for grafana_name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(grafana_name, value)
    return re.sub(r"\$\w+", "x", expr)


def metric_names(expr: str) -> set[str]:
    """Names of series an expression selects: identifiers that are not functions, keywords or label lists."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = {name for name in re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", text)}
    return names - PROMQL_WORDS


def emitted_names() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for pattern in ("agents/**/*.py", "agents/**/*.yml", "collector/**/*.py", "docs/*.md")
        for path in ROOT.glob(pattern)
        if path.name not in {"runbooks.md", "dashboards.md"}
    )


def is_emitted(name: str, sources: str) -> bool:
    """node_memory_<field>_bytes is built from /proc/meminfo's field names (docs/host.md), not written out."""
    meminfo = re.fullmatch(r"node_memory_(\w+)_bytes", name)
    return bool(re.search(rf"\b{meminfo.group(1) if meminfo else name}\b", sources))


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULES_DIR.glob("*.yml")
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def test_the_six_dashboards_of_the_issue_are_there() -> None:
    assert {load(path)["title"] for path in DASHBOARD_FILES} == EXPECTED_TITLES


def test_committed_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DASHBOARD_DIR / "generate.py"), str(tmp_path)], check=True, timeout=60)
    generated = {path.name: path.read_text(encoding="utf-8") for path in tmp_path.glob("*.json")}
    committed = {path.name: path.read_text(encoding="utf-8") for path in DASHBOARD_FILES}
    assert generated == committed


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_dashboard_has_grafana_dashboard_shape(path: Path) -> None:
    board = load(path)
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    assert board["title"] and isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["templating"]["list"][0] == {**board["templating"]["list"][0], "name": "datasource", "type": "datasource", "query": "prometheus"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) > 0
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"] and all(target["expr"] and target["refId"] for target in panel["targets"])


def test_uids_are_unique_across_dashboards() -> None:
    uids = [load(path)["uid"] for path in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


def test_variables_come_from_label_values_of_the_chosen_data_source() -> None:
    for _, variable in query_variables():
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert re.fullmatch(r"label_values\(.+, \w+\)", variable["definition"])
        assert variable["query"]["query"] == variable["definition"]


def test_every_variable_a_query_uses_is_defined() -> None:
    for path in DASHBOARD_FILES:
        board = load(path)
        defined = {variable["name"] for variable in board["templating"]["list"]}
        used = {
            name
            for panel in board["panels"]
            for text in [panel["title"], *(target["expr"] for target in panel["targets"])]
            for name in re.findall(r"\$(?!__)(\w+)", text)
        }
        assert used <= defined, path.name


def test_every_panel_and_variable_query_parses_in_promtool(tmp_path: Path) -> None:
    exprs = [as_promql(expr) for expr in [*panel_exprs(), *variable_selectors()]]
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"dashboard_query_{n}", "expr": e} for n, e in enumerate(exprs)]}]}
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    result = subprocess.run([require_binary("promtool", "prometheus"), "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_every_metric_a_query_selects_is_emitted_or_recorded() -> None:
    sources, recorded = emitted_names(), recorded_names()
    selected = {name for expr in [*panel_exprs(), *variable_selectors()] for name in metric_names(expr)}
    base_names = {re.sub(r"_(bucket|sum|count)$", "", name) for name in selected}
    unknown = {
        name for name in base_names - PROMETHEUS_OWN_SERIES
        if name not in recorded and not is_emitted(name, sources)
    }
    assert unknown == set()
    assert {"netmon_agent_up", "probe_icmp_rtt_seconds", "ifHCInOctets", "agency:netmon_agent_up:max"} <= base_names
