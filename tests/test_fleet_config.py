"""Fleet configs without servers: templates rendered per agent from the inventory, validated with the agent's own
loader (errors name template key and agent), `render-config`, and the agent's merge of served and local sections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.config import ConfigError
from agents.fleet import Served, load_agent_config, load_at_start, write_cache
from collector import agent_check
from collector.config import parse_collector_config
from foundation.fleet_protocol import config_hash

ROOT = Path(__file__).resolve().parent.parent
ENV = {"FLEET_CFG_TOKEN_1": "cfg-token-1-a9", "FLEET_CFG_TOKEN_2": "cfg-token-2-b7"}

INVENTORY = """\
agencies:
  - {id: so-tttt, name: "Sở TTTT", district: tp-my-tho, level: department, vars: {gateway: 10.1.0.1}}
  - {id: xa-a, name: "Xã A", district: cai-be, level: commune, vars: {gateway: 10.2.0.1, lan_switch: 10.2.0.2}}
districts:
  - {id: cai-be, vars: {router: 10.2.255.1}}
agents:
  - {id: so-tttt-1, agency: so-tttt, mode: push, bearer_token: "${FLEET_CFG_TOKEN_1}"}
  - {id: xa-a-1, agency: xa-a, mode: pull, address: "10.2.0.10:9855", config_token: "${FLEET_CFG_TOKEN_2}"}
"""

TEMPLATES = """\
templates:
  - name: province
    modules:
      tcp_connect: {prober: tcp, timeout: 2s}
    targets:
      - {name: mail-smtp, address: "10.0.0.25:25", module: tcp_connect}
      - {name: gateway, address: "{{ agency.gateway }}:22", module: tcp_connect}
  - name: communes
    select: {levels: [commune]}
    targets:
      - {name: district-router, address: "{{district.router}}:22", module: tcp_connect}
      - {name: mail-smtp, address: "10.0.0.26:25", module: tcp_connect}
    snmp_auths:
      lan: {version: 2c, community: "${SNMP_COMMUNITY}"}
    snmp_devices:
      - {name: lan-switch, address: "{{ agency.lan_switch }}", auth: lan}
"""


@pytest.fixture(autouse=True)
def tokens(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def served_sections(templates: str, agent: str) -> dict:
    config = parse_collector_config(INVENTORY + templates, "collector.yml")
    return yaml.safe_load(config.fleet.configs[agent].text)


def error_of(templates: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_collector_config(INVENTORY + templates, "collector.yml")
    return str(caught.value)


def test_variables_come_from_the_agency_and_its_district():
    targets = {t["name"]: t["address"] for t in served_sections(TEMPLATES, "xa-a-1")["targets"]}
    assert targets["gateway"] == "10.2.0.1:22" and targets["district-router"] == "10.2.255.1:22"
    assert served_sections(TEMPLATES, "xa-a-1")["snmp_devices"][0]["address"] == "10.2.0.2"


def test_selectors_pick_agencies_and_a_later_template_replaces_an_entry_of_the_same_name():
    department, commune = served_sections(TEMPLATES, "so-tttt-1"), served_sections(TEMPLATES, "xa-a-1")
    assert [t["name"] for t in department["targets"]] == ["mail-smtp", "gateway"]
    assert "snmp_devices" not in department
    assert [t["name"] for t in commune["targets"]] == ["gateway", "district-router", "mail-smtp"]
    assert commune["targets"][2]["address"] == "10.0.0.26:25"


def test_secret_references_are_served_as_references_even_when_the_collector_has_the_variable(monkeypatch):
    monkeypatch.setenv("SNMP_COMMUNITY", "community-value-3f")
    config = parse_collector_config(INVENTORY + TEMPLATES, "collector.yml")
    text = config.fleet.configs["xa-a-1"].text
    assert "community: ${SNMP_COMMUNITY}" in text and "community-value-3f" not in text
    assert not any(value in served.text for served in config.fleet.configs.values() for value in ENV.values())


def test_an_unknown_variable_names_the_template_key_and_the_agent():
    message = error_of(TEMPLATES.replace("{{ agency.lan_switch }}", "{{ agency.lan_swich }}"))
    assert message.startswith("collector.yml:24: templates[1].snmp_devices[0].address: unknown variable {{ agency.lan_swich }}")
    assert "agent xa-a-1" in message and "agency.lan_switch" in message


def test_a_variable_one_agency_lacks_fails_for_that_agent():
    message = error_of(TEMPLATES.replace("{{district.router}}", "{{ agency.lan_switch }}").replace("select: {levels: [commune]}", "select: {}"))
    assert "templates[1].targets[0].address" in message and "agent so-tttt-1 (agency so-tttt)" in message


def test_a_rendered_config_the_agent_would_reject_names_template_key_agent_and_agent_key():
    message = error_of(TEMPLATES.replace("module: tcp_connect}\n  - name: communes", "module: tcp_conect}\n  - name: communes"))
    assert message == (
        "collector.yml:15: templates[0].targets[1].module: rendered for agent so-tttt-1 (agency so-tttt), "
        "key targets[1].module: unknown module 'tcp_conect'; modules: tcp_connect"
    )


def test_served_sections_are_limited_to_probe_sets():
    with pytest.raises(ConfigError) as caught:
        parse_collector_config(INVENTORY + "templates:\n  - {name: x, push: {url: http://a}}\n", "collector.yml")
    assert "templates[0].push: unknown key" in str(caught.value)


def test_selectors_must_name_known_agencies_and_districts():
    assert "templates[0].select.districts[0]: unknown district 'cai-bee'" in error_of("templates:\n  - {name: x, select: {districts: [cai-bee]}}\n")
    assert "templates[0].select.agencies[0]: unknown agency 'xa-z'" in error_of("templates:\n  - {name: x, select: {agencies: [xa-z]}}\n")


def test_an_unchanged_template_keeps_the_hash_of_agents_it_does_not_change():
    before = parse_collector_config(INVENTORY + TEMPLATES, "collector.yml").fleet.configs
    after = parse_collector_config(INVENTORY + TEMPLATES.replace("10.0.0.26:25", "10.0.0.27:25"), "collector.yml").fleet.configs
    assert before["so-tttt-1"].hash == after["so-tttt-1"].hash
    assert before["xa-a-1"].hash != after["xa-a-1"].hash


def test_render_config_prints_what_the_agent_receives(tmp_path):
    config = tmp_path / "collector.yml"
    config.write_text(INVENTORY + TEMPLATES, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "collector.cli", "render-config", "xa-a-1", "--config", str(config)],
        capture_output=True, text=True, env={**os.environ, **ENV}, cwd=str(ROOT), timeout=30,
    )
    assert result.returncode == 0, result.stderr
    served = parse_collector_config(INVENTORY + TEMPLATES, "collector.yml").fleet.configs["xa-a-1"]
    assert result.stdout == served.text and config_hash(result.stdout) == served.hash
    assert "communes" in result.stderr


LOCAL = """\
agent: {id: xa-a-1, agency: xa-a}
listen: 127.0.0.1:19855
fleet: {url: "http://127.0.0.1:9", bearer_token: "${FLEET_CFG_TOKEN_2}", cache_file: CACHE}
modules:
  tcp_connect: {prober: tcp, timeout: 1s}
targets:
  - {name: mail-smtp, address: "192.0.2.25:25", module: tcp_connect}
  - {name: local-only, address: "192.0.2.1:80", module: tcp_connect}
"""


def local_file(tmp_path: Path, text: str = LOCAL) -> str:
    path = tmp_path / "agent.yml"
    path.write_text(text.replace("CACHE", str(tmp_path / "served.yml")), encoding="utf-8")
    return str(path)


def served(text: str) -> Served:
    return Served(text, config_hash(text), "collector")


def test_local_entries_add_to_and_override_served_ones_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SNMP_COMMUNITY", "community-value-3f")  # the agent resolves the served reference
    text = parse_collector_config(INVENTORY + TEMPLATES, "collector.yml").fleet.configs["xa-a-1"].text
    config = load_agent_config(local_file(tmp_path), served(text)).config
    addresses = {target.name: target.address for target in config.targets}
    assert addresses["mail-smtp"] == "192.0.2.25:25"  # local wins
    assert addresses["local-only"] == "192.0.2.1:80" and addresses["district-router"] == "10.2.255.1:22"
    assert config.modules["tcp_connect"].timeout == 1.0  # the local module of the same name


def test_an_error_in_a_served_entry_points_at_the_served_config(tmp_path):
    bad = "targets:\n  - {name: s, address: '192.0.2.9:1', module: nope}\n"
    with pytest.raises(ConfigError) as caught:
        load_agent_config(local_file(tmp_path), served(bad))
    assert str(caught.value).startswith(f"served config {config_hash(bad)}:2: targets[0].module: unknown module 'nope'")


def test_an_error_in_a_local_entry_points_at_the_local_file_and_line(tmp_path):
    path = local_file(tmp_path, LOCAL.replace("module: tcp_connect}\n  - {name: local-only", "module: tcp_connect}\n  - {name: local-only, interval: soon"))
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path, served("targets: []\n"))
    assert str(caught.value).startswith(f"{path}:8: targets[1].interval:")


def test_the_collector_may_not_serve_local_sections(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_agent_config(local_file(tmp_path), served("listen: 0.0.0.0:80\n"))
    assert "served config" in str(caught.value) and "may not serve 'listen'" in str(caught.value)


def test_start_uses_the_cache_and_falls_back_to_the_local_file_when_the_cache_does_not_fit(tmp_path):
    path = local_file(tmp_path)
    write_cache(str(tmp_path / "served.yml"), "targets:\n  - {name: cached, address: '192.0.2.7:7', module: tcp_connect}\n")
    cached = load_at_start(path)
    write_cache(str(tmp_path / "served.yml"), "targets:\n  - {name: cached, address: '192.0.2.7:7', module: gone}\n")
    fallback = load_at_start(path)
    assert cached.served is not None and cached.served.source == "cache" and cached.config.target("cached") is not None
    assert fallback.served is None and fallback.config.target("cached") is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fleet-cache-")] == []  # no temporary left


def test_a_section_of_the_wrong_shape_is_an_error_not_a_crash(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_agent_config(local_file(tmp_path), served("targets: {a: 1}\n"))
    assert "served config" in str(caught.value) and "targets: must be a list" in str(caught.value)


@pytest.mark.parametrize(
    "key, entry",
    [
        ("config_token_file", '{id: xa-a-2, agency: xa-a, mode: pull, address: "10.2.0.11:9855", config_token_file: FILE}'),
        ("bearer_token_file", "{id: xa-a-2, agency: xa-a, mode: push, bearer_token_file: FILE}"),
    ],
)
def test_a_duplicated_credential_is_reported_with_the_key_it_was_given_with(tmp_path, key, entry):
    token_file = tmp_path / "copied.token"
    token_file.write_text(ENV["FLEET_CFG_TOKEN_2"] + "\n", encoding="utf-8")  # xa-a-1's config_token
    config = tmp_path / "collector.yml"
    config.write_text(INVENTORY + f"  - {entry.replace('FILE', str(token_file))}\n", encoding="utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check-config", str(config)], capture_output=True, text=True,
        env={**os.environ, **ENV}, cwd=str(ROOT), timeout=30,
    )
    assert checked.returncode == 2
    assert f"agents[2].{key}: the same credential is already bound to agent 'xa-a-1'" in checked.stderr


def test_a_failed_fetch_is_retried_with_backoff_never_later_than_the_refresh_interval():
    from agents.fleet import FETCH_RETRY_MAX, retry_delay

    delays = [max(retry_delay(failures, 60.0) for _ in range(50)) for failures in range(1, 12)]
    assert delays[0] <= 1.0 and delays[1] <= 2.0 and delays[2] <= 4.0
    assert max(delays) <= FETCH_RETRY_MAX and delays[-1] > FETCH_RETRY_MAX / 2
    assert all(retry_delay(failures, 3.0) <= 3.0 for failures in range(1, 2000))  # no overflow after long outages


def test_the_collector_loads_templates_without_importing_agent_code(tmp_path):
    config = tmp_path / "collector.yml"
    config.write_text(INVENTORY + TEMPLATES, encoding="utf-8")
    script = (
        "import sys; from collector.cli import main; code = main(['check-config', sys.argv[1]]); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'agents')); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(config)], capture_output=True, text=True, env={**os.environ, **ENV}, cwd=str(ROOT), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_the_agent_program_checks_served_configs_as_json(tmp_path):
    request = {
        "a-1": {"agent": {"id": "a-1", "agency": "x"}, "targets": [{"name": "t", "address": "192.0.2.1", "module": "nope"}]},
        "b-1": {"agent": {"id": "b-1", "agency": "y"}, "modules": {"icmp": {"prober": "icmp"}}},
    }
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check-served"], input=json.dumps(request), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "a-1": {"ok": False, "path": ["targets", 0, "module"], "message": "unknown module 'nope'; modules: none defined"},
        "b-1": {"ok": True},
    }


def test_a_value_json_cannot_hold_reaches_the_agent_program_as_the_agent_reads_it():
    message = error_of(TEMPLATES.replace("{name: mail-smtp, address: \"10.0.0.25:25\"", "{name: 2026-12-06, address: \"10.0.0.25:25\""))
    assert "templates[0].targets[0].name: rendered for agent so-tttt-1 (agency so-tttt), key targets[0].name: Expected `str`, got `date`" in message


def test_a_collector_without_templates_needs_no_agent_program(monkeypatch):
    monkeypatch.setattr(agent_check, "AGENT_CHECK_COMMAND", ("/nonexistent/netmon-agent",))
    assert parse_collector_config(INVENTORY, "collector.yml").fleet.configs["xa-a-1"].text == "{}\n"


@pytest.mark.parametrize(
    "command, timeout, reason",
    [
        (("/nonexistent/netmon-agent", "check-served"), 60, "cannot run the agent program (/nonexistent/netmon-agent check-served): No such file"),
        ((sys.executable, "-c", "import sys; sys.exit('no such command')"), 60, "failed (exit status 1): no such command"),
        ((sys.executable, "-c", "import time; time.sleep(30)"), 0.5, "gave no answer: none within 0.5 s"),
        ((sys.executable, "-c", "print('ok')"), 60, "gave an unreadable answer"),
        ((sys.executable, "-c", "print('{}')"), 60, "gave no verdict for agent so-tttt-1"),
    ],
)
def test_an_agent_program_that_cannot_check_fails_the_load_and_says_why(monkeypatch, command, timeout, reason):
    monkeypatch.setattr(agent_check, "AGENT_CHECK_COMMAND", command)
    monkeypatch.setattr(agent_check, "AGENT_CHECK_TIMEOUT", timeout)
    message = error_of(TEMPLATES)
    assert message.startswith("collector.yml:9: templates: cannot check the served configs: ") and reason in message
